"""A text-generation-inference stand-in that speaks TGI's HTTP protocol (test code only).

TGI needs CUDA and cannot run here, so the local node runs this for TGI images. It takes
the launcher's flags (`--model-id`, `--port`, `--hostname`, `--max-concurrent-requests`,
`--max-input-tokens`, `--max-total-tokens`, ...; unknown ones are accepted and ignored) and
serves `/`, `/generate`, `/generate_stream` (SSE in TGI's event shape), `/v1/chat/completions`
and `/v1/completions` (both with `stream`), `/v1/models`, `/info`, `/health` and `/metrics`
with TGI's metric names. Output is deterministic: the same prompt gives the same tokens.
Timing, batching and the prefix cache are the shared core's (`core.py`); `--fake-*` flags
(or env `TGI_FAKE_*`) tune them. `POST /fake/reset` empties the prefix cache and zeroes the
metrics (see core.reset_handler).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

from aiohttp import web

from .core import (Engine, Observer, Overloaded, Request, add_fake_flags, primed, read_body, render_chat,
                   reset_handler, serve, settings_from, token_id, tokenize)

VERSION = "2.4.1"
FINISH = {"eos": "eos_token", "length": "length", "stop_sequence": "stop_sequence"}
OPENAI_FINISH = FINISH  # as TGI 2.x names them on its OpenAI routes too


class ValidationFailed(Exception):
    pass


class TgiMetrics(Observer):
    def __init__(self) -> None:
        self.counters = {"tgi_request_count": 0, "tgi_request_success": 0, "tgi_request_failure": 0,
                         "tgi_batch_inference_count": 0, "tgi_request_generated_tokens_total_count": 0,
                         "tgi_prefix_cache_hit_tokens": 0, "tgi_request_input_tokens": 0}
        self.durations: list[float] = []

    def admitted(self, prompt_tokens: int) -> None:
        self.counters["tgi_request_count"] += 1
        self.counters["tgi_request_input_tokens"] += prompt_tokens

    def scheduled(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.counters["tgi_prefix_cache_hit_tokens"] += cached_tokens
        self.counters["tgi_batch_inference_count"] += 1

    def finished(self, seconds: float, prompt_tokens: int, generated: int, finish: str | None) -> None:
        self.counters["tgi_request_success" if finish else "tgi_request_failure"] += 1
        self.durations.append(seconds)

    def render(self, engine: Engine) -> str:
        out = []
        for name, v in self.counters.items():
            out += [f"# TYPE {name} counter", f"{name} {v}"]
        out += ["# TYPE tgi_queue_size gauge", f"tgi_queue_size {engine.waiting}",
                "# TYPE tgi_batch_current_size gauge", f"tgi_batch_current_size {engine.running}"]
        buckets = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
        out.append("# TYPE tgi_request_duration histogram")
        for b in buckets:
            out.append(f'tgi_request_duration_bucket{{le="{b}"}} {sum(1 for d in self.durations if d <= b)}')
        out += [f'tgi_request_duration_bucket{{le="+Inf"}} {len(self.durations)}',
                f"tgi_request_duration_sum {sum(self.durations)}", f"tgi_request_duration_count {len(self.durations)}"]
        return "\n".join(out) + "\n"


class Tgi:
    """TGI's request handling over one engine: validation, then the core's generation."""

    def __init__(self, engine: Engine, max_input_tokens: int, max_total_tokens: int):
        self.engine, self.max_input, self.max_total = engine, max_input_tokens, max_total_tokens

    def generate(self, prompt: str, params: dict):
        tokens = tokenize(prompt)
        max_new = int(params.get("max_new_tokens") or 20)
        if len(tokens) > self.max_input:
            raise ValidationFailed(f"Input validation error: `inputs` must have less than "
                                   f"{self.max_input} tokens. Given: {len(tokens)}")
        if len(tokens) + max_new > self.max_total:
            raise ValidationFailed(f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                                   f"{self.max_total}. Given: {len(tokens)} `inputs` tokens and "
                                   f"{max_new} `max_new_tokens`")
        stops = tuple(params.get("stop") or ())
        return self.engine.generate(Request(prompt, tokens, max_new, stops=stops, seed=params.get("seed")))

    async def run_full(self, prompt: str, params: dict) -> tuple[str, list[dict], str]:
        text, toks, finish = "", [], "length"
        async for piece, _, fin in self.generate(prompt, params):
            text += piece
            toks.append(token_json(piece))
            finish = FINISH.get(fin, finish)
        return text, toks, finish


def token_json(piece: str) -> dict:
    return {"id": token_id(piece), "text": piece, "logprob": -0.25, "special": False}


def sse(obj) -> bytes:
    # TGI's SSE events are written as `data:<json>` with no space, each ended by a blank line.
    return b"data:" + (obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()) + b"\n\n"


def error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": message, "error_type": kind}, status=status)


async def read_json(req: web.Request) -> dict:
    try:
        body = await read_body(req)
    except ValueError:
        raise web.HTTPUnprocessableEntity(text=json.dumps({"error": "Failed to deserialize the JSON body",
                                                           "error_type": "validation"}),
                                          content_type="application/json")
    if not isinstance(body, dict):
        raise web.HTTPUnprocessableEntity(text=json.dumps({"error": "expected a JSON object",
                                                           "error_type": "validation"}),
                                          content_type="application/json")
    return body


async def guarded(fn, req):
    try:
        return await fn(req)
    except ValidationFailed as e:
        return error(422, str(e), "validation")
    except Overloaded as e:
        return error(429, str(e), "overloaded")


def native_routes(tgi: Tgi) -> dict:
    """`/`, `/generate` and `/generate_stream`."""
    async def generate(req: web.Request, as_list: bool = False) -> web.StreamResponse:
        body = await read_json(req)
        if "inputs" not in body:
            return error(422, "Failed to deserialize the JSON body into the target type: missing field `inputs`",
                         "validation")
        params = body.get("parameters") or {}
        if body.get("stream"):
            return await generate_stream(req, body)
        text, toks, finish = await tgi.run_full(body["inputs"], params)
        if params.get("return_full_text"):
            text = body["inputs"] + text
        out = {"generated_text": text}
        if params.get("details") or as_list:
            out["details"] = {"finish_reason": finish, "generated_tokens": len(toks), "seed": params.get("seed"),
                              "prefill": [], "tokens": toks, "top_tokens": None, "best_of_sequences": None}
        return web.json_response([out] if as_list else out)

    async def generate_stream(req: web.Request, body: dict | None = None) -> web.StreamResponse:
        body = body or await read_json(req)
        params = body.get("parameters") or {}
        prompt = body.get("inputs", "")
        tokens = await primed(tgi.generate(prompt, params))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(req)
        text, n = "", 0
        async for piece, i, fin in tokens:
            text += piece
            n += 1
            ev = {"index": i + 1, "token": token_json(piece), "top_tokens": None, "generated_text": None,
                  "details": None}
            if fin:
                ev["generated_text"] = (prompt + text) if params.get("return_full_text") else text
                ev["details"] = {"finish_reason": FINISH[fin], "generated_tokens": n, "seed": params.get("seed"),
                                 "input_length": len(tokenize(prompt))}
            await resp.write(sse(ev))
        await resp.write_eof()
        return resp

    return {"/": lambda r: generate(r, as_list=True), "/generate": generate, "/generate_stream": generate_stream}


def openai_routes(tgi: Tgi) -> dict:
    """`/v1/chat/completions` and `/v1/completions`, as TGI 2.x answers them."""
    model_id = tgi.engine.s.model_id

    async def chat(req: web.Request) -> web.StreamResponse:
        body = await read_json(req)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return error(422, "Failed to deserialize the JSON body into the target type: messages: missing field",
                         "validation")
        return await openai_like(req, body, render_chat(messages), chat=True)

    async def completions(req: web.Request) -> web.StreamResponse:
        body = await read_json(req)
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else ""
        if not isinstance(prompt, str):
            return error(422, "Failed to deserialize the JSON body into the target type: prompt: missing field",
                         "validation")
        return await openai_like(req, body, prompt, chat=False)

    async def openai_like(req: web.Request, body: dict, prompt: str, chat: bool) -> web.StreamResponse:
        stop = body.get("stop")
        params = {"max_new_tokens": body.get("max_tokens") or 20, "seed": body.get("seed"),
                  "stop": stop if isinstance(stop, list) else [stop] if stop else []}
        rid, created = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:12], int(time.time())
        base = {"id": rid, "created": created, "model": model_id, "system_fingerprint": f"{VERSION}-native"}
        if not body.get("stream"):
            return await whole(base, prompt, params, chat)
        tokens = await primed(tgi.generate(prompt, params))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(req)
        async for piece, _, fin in tokens:
            fin = OPENAI_FINISH.get(fin)
            if chat:
                choice = {"index": 0, "delta": {"role": "assistant", "content": piece, "tool_calls": None},
                          "logprobs": None, "finish_reason": fin}
                await resp.write(sse({**base, "object": "chat.completion.chunk", "choices": [choice], "usage": None}))
            else:
                choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": fin}
                await resp.write(sse({**base, "object": "text_completion", "choices": [choice]}))
        # TGI 2.0, the release the `text-generation` 0.7 client speaks to, ends the stream
        # without OpenAI's `data: [DONE]` (that client fails to parse it); so does this fake.
        await resp.write_eof()
        return resp

    async def whole(base: dict, prompt: str, params: dict, chat: bool) -> web.Response:
        text, toks, finish = await tgi.run_full(prompt, params)
        finish = OPENAI_FINISH.get(finish, finish)
        n_prompt = len(tokenize(prompt))
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(toks), "total_tokens": n_prompt + len(toks)}
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": None},
                      "logprobs": None, "finish_reason": finish}
            return web.json_response({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return web.json_response({**base, "object": "text_completion", "choices": [choice], "usage": usage})

    return {"/v1/chat/completions": chat, "/v1/completions": completions}


def make_app(engine: Engine, max_input_tokens: int, max_total_tokens: int) -> web.Application:
    s, tgi = engine.s, Tgi(engine, max_input_tokens, max_total_tokens)

    async def info(_: web.Request) -> web.Response:
        return web.json_response({
            "model_id": s.model_id, "model_sha": None, "model_dtype": "torch.float16",
            "model_device_type": "cuda", "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": s.max_concurrent_requests, "max_best_of": 2, "max_stop_sequences": 4,
            "max_input_tokens": max_input_tokens, "max_total_tokens": max_total_tokens,
            "validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router",
            "version": VERSION, "sha": None, "docker_label": None,
        })

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200) if engine.ready else error(503, "Model is loading", "unhealthy")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": s.model_id, "object": "model", "created": int(engine.started), "owned_by": s.model_id}]})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=engine.metrics.render(engine), content_type="text/plain")

    app = web.Application()
    for path, handler in {**native_routes(tgi), **openai_routes(tgi)}.items():
        app.router.add_post(path, lambda r, h=handler: guarded(h, r))
    app.router.add_get("/v1/models", models)
    app.router.add_get("/info", info)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/fake/reset", reset_handler(engine, error))
    return app


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, Engine]:
    p = argparse.ArgumentParser(prog="text-generation-launcher (modelship fake)")
    p.add_argument("--model-id", default=os.environ.get("MODEL_ID", "bigscience/bloom-560m"))
    p.add_argument("--hostname", default="127.0.0.1")  # TGI's is 0.0.0.0; here only loopback
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", 3000)))
    p.add_argument("--max-concurrent-requests", type=int, default=128)
    p.add_argument("--max-input-tokens", "--max-input-length", type=int, default=1024)
    p.add_argument("--max-total-tokens", type=int, default=2048)
    add_fake_flags(p, ("TGI_FAKE_",), 32)
    args, unknown = p.parse_known_args(argv)
    if unknown:
        print(f"fake TGI: ignoring launcher flags {unknown}", file=sys.stderr)
    if args.model_id.startswith("/") and not os.path.exists(args.model_id):
        raise SystemExit(f"Error: model path {args.model_id} does not exist")
    s = settings_from(args, args.model_id, args.max_concurrent_requests, 32)
    return args, Engine(s, TgiMetrics)


def main(argv: list[str] | None = None) -> None:
    args, engine = parse(argv)
    print(f"fake TGI {VERSION}: serving {args.model_id} on {args.hostname}:{args.port}", file=sys.stderr, flush=True)
    serve(make_app(engine, args.max_input_tokens, args.max_total_tokens), args.hostname, args.port)


if __name__ == "__main__":
    main()

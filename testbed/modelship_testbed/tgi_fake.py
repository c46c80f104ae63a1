"""A text-generation-inference stand-in that speaks TGI's HTTP protocol (test code only).

TGI needs CUDA and cannot run here, so the local node runs this for TGI images. It takes
the launcher's flags (`--model-id`, `--port`, `--hostname`, `--max-concurrent-requests`,
`--max-input-tokens`, `--max-total-tokens`, ...; unknown ones are accepted and ignored) and
serves `/`, `/generate`, `/generate_stream` (SSE in TGI's event shape), `/v1/chat/completions`
and `/v1/completions` (both with `stream`), `/v1/models`, `/info`, `/health` and `/metrics`
with TGI's metric names. Output is deterministic: the same prompt gives the same tokens.

Timing is simulated: a prefill cost per prompt token not found in a simulated prefix cache
(blocks of 16 "tokens", chained hashes, LRU), then a fixed delay per generated token, and at
most `--fake-max-batch-size` requests decoding at once (the rest wait, counted in
`tgi_queue_size`). Flags prefixed `--fake-` (or env `TGI_FAKE_*`) tune this. Prefills run
side by side by default; with `--fake-prefill-shared` (env `TGI_FAKE_PREFILL_SHARED=1`) they
share one engine's compute, as on a GPU: the uncached tokens of concurrent prefills go through
one FIFO lock in chunks of `PREFILL_CHUNK` tokens (each chunk holds it for its tokens'
prefill cost, then queues again), an approximation of chunked prefill's processor sharing,
so that a busy engine's prefills slow each other down.

`POST /fake/reset` (for benchmarks that reuse one set of fakes run after run), with an
optional JSON body `{"cache_blocks": N}`: empties the prefix cache (and sets its capacity
when given) and zeroes the metrics; refused with 409 while requests are in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import AsyncIterator

from aiohttp import web

VERSION = "2.4.1"
BLOCK = 16
PREFILL_CHUNK = 256  # tokens per turn at the shared prefill (--fake-prefill-shared)
WORDS = ("the model answers in a deterministic way so that tests can compare every token it "
         "streams across runs and replicas while the router balances requests").split()


def tokenize(text: str) -> list[str]:
    """Rough stand-in for a tokenizer: words and punctuation."""
    return re.findall(r"\w+|[^\w\s]", text)


def token_id(piece: str) -> int:
    return int.from_bytes(hashlib.blake2b(piece.encode(), digest_size=4).digest(), "little") % 32000


class PrefixCache:
    """Which prompt blocks were served recently: a chain of block hashes in an LRU."""

    def __init__(self, capacity_blocks: int):
        self.capacity = capacity_blocks
        self.blocks: OrderedDict[bytes, None] = OrderedDict()

    def lookup_and_insert(self, tokens: list[str]) -> int:
        """Cached prefix length in tokens; then remember every full block of this prompt."""
        h = b""
        hits, matching = 0, True
        for i in range(0, len(tokens) - len(tokens) % BLOCK, BLOCK):
            h = hashlib.blake2b(h + "\x00".join(tokens[i:i + BLOCK]).encode(), digest_size=16).digest()
            if matching and h in self.blocks:
                hits += BLOCK
                self.blocks.move_to_end(h)
            else:
                matching = False
                self.blocks[h] = None
                if len(self.blocks) > self.capacity:
                    self.blocks.popitem(last=False)
        return hits


@dataclass
class Settings:
    model_id: str
    max_concurrent_requests: int
    max_input_tokens: int
    max_total_tokens: int
    max_batch_size: int
    token_delay: float
    prefill_per_token: float
    load_seconds: float
    cache_blocks: int
    prefill_shared: bool = False  # prefills take turns on one engine's compute (see the top)


class Metrics:
    def __init__(self) -> None:
        self.counters = {"tgi_request_count": 0, "tgi_request_success": 0, "tgi_request_failure": 0,
                         "tgi_batch_inference_count": 0, "tgi_request_generated_tokens_total_count": 0,
                         "tgi_prefix_cache_hit_tokens": 0, "tgi_request_input_tokens": 0}
        self.queue_size = 0
        self.batch_size = 0
        self.durations: list[float] = []

    def render(self) -> str:
        out = []
        for name, v in self.counters.items():
            out += [f"# TYPE {name} counter", f"{name} {v}"]
        out += ["# TYPE tgi_queue_size gauge", f"tgi_queue_size {self.queue_size}",
                "# TYPE tgi_batch_current_size gauge", f"tgi_batch_current_size {self.batch_size}"]
        buckets = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
        out.append("# TYPE tgi_request_duration histogram")
        for b in buckets:
            out.append(f'tgi_request_duration_bucket{{le="{b}"}} {sum(1 for d in self.durations if d <= b)}')
        out += [f'tgi_request_duration_bucket{{le="+Inf"}} {len(self.durations)}',
                f"tgi_request_duration_sum {sum(self.durations)}", f"tgi_request_duration_count {len(self.durations)}"]
        return "\n".join(out) + "\n"


class Overloaded(Exception):
    pass


class ValidationFailed(Exception):
    pass


class Engine:
    def __init__(self, s: Settings):
        self.s = s
        self.cache = PrefixCache(s.cache_blocks)
        self.metrics = Metrics()
        self.inflight = 0
        self.slots = asyncio.Semaphore(s.max_batch_size)
        self.prefill_lock = asyncio.Lock()  # FIFO: a waiter is never overtaken by a later acquire
        self.started = time.monotonic()

    def reset(self, cache_blocks: int | None = None) -> None:
        """An empty prefix cache (of `cache_blocks` blocks when given) and zeroed metrics;
        only while no request is in flight (the caller checks)."""
        if cache_blocks is not None:
            self.s.cache_blocks = cache_blocks
        self.cache = PrefixCache(self.s.cache_blocks)
        self.metrics = Metrics()

    async def prefill(self, tokens: int) -> None:
        """The simulated cost of prefilling `tokens` uncached tokens: side by side with other
        requests' prefills, or (prefill_shared) chunk by chunk through the engine's one lock,
        queueing again after each chunk so that concurrent prefills share the compute."""
        if not self.s.prefill_shared:
            await asyncio.sleep(self.s.prefill_per_token * tokens)
            return
        while tokens > 0:
            chunk = min(tokens, PREFILL_CHUNK)
            async with self.prefill_lock:
                await asyncio.sleep(self.s.prefill_per_token * chunk)
            tokens -= chunk

    @property
    def ready(self) -> bool:
        return time.monotonic() - self.started >= self.s.load_seconds

    def output(self, prompt: str, n: int, seed: int | None) -> list[str]:
        digest = hashlib.sha256(f"{prompt}\x00{seed}".encode()).digest()
        return [(" " if i else "") + WORDS[(digest[i % 32] + i) % len(WORDS)] for i in range(n)]

    async def generate(self, prompt: str, params: dict):
        """Yields (token_text, index, finish_reason) per generated token after a simulated prefill;
        finish_reason is None until the last token ("length" or "stop_sequence")."""
        tokens = tokenize(prompt)
        max_new = int(params.get("max_new_tokens") or 20)
        if len(tokens) > self.s.max_input_tokens:
            raise ValidationFailed(f"Input validation error: `inputs` must have less than "
                                   f"{self.s.max_input_tokens} tokens. Given: {len(tokens)}")
        if len(tokens) + max_new > self.s.max_total_tokens:
            raise ValidationFailed(f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                                   f"{self.s.max_total_tokens}. Given: {len(tokens)} `inputs` tokens and "
                                   f"{max_new} `max_new_tokens`")
        if self.inflight >= self.s.max_concurrent_requests:
            raise Overloaded("Model is overloaded")
        self.inflight += 1
        self.metrics.counters["tgi_request_count"] += 1
        self.metrics.counters["tgi_request_input_tokens"] += len(tokens)
        start = time.monotonic()
        self.metrics.queue_size += 1
        queued = True
        try:
            async with self.slots:
                self.metrics.queue_size -= 1
                queued = False
                self.metrics.batch_size += 1
                try:
                    hits = self.cache.lookup_and_insert(tokens)
                    self.metrics.counters["tgi_prefix_cache_hit_tokens"] += hits
                    self.metrics.counters["tgi_batch_inference_count"] += 1
                    await self.prefill(len(tokens) - hits)
                    stops = params.get("stop") or []
                    text = ""
                    for i, piece in enumerate(self.output(prompt, max_new, params.get("seed"))):
                        await asyncio.sleep(self.s.token_delay)
                        text += piece
                        stop_hit = any(s and text.endswith(s) for s in stops)
                        yield piece, i, ("stop_sequence" if stop_hit else "length" if i == max_new - 1 else None)
                        if stop_hit:
                            break
                    self.metrics.counters["tgi_request_success"] += 1
                finally:
                    self.metrics.batch_size -= 1
        except BaseException:
            self.metrics.counters["tgi_request_failure"] += 1
            raise
        finally:
            if queued:  # cancelled while waiting for a batch slot
                self.metrics.queue_size -= 1
            self.inflight -= 1
            self.metrics.durations.append(time.monotonic() - start)


async def primed(agen: AsyncIterator) -> AsyncIterator:
    """Run a stream to its first item before any response is sent, so that validation and
    overload errors become an HTTP error status rather than a broken event stream."""
    try:
        first = await agen.__anext__()
    except StopAsyncIteration:
        first = None

    async def rest() -> AsyncIterator:
        if first is None:
            return
        yield first
        async for item in agen:
            yield item

    return rest()


def token_json(piece: str) -> dict:
    return {"id": token_id(piece), "text": piece, "logprob": -0.25, "special": False}


def sse(obj) -> bytes:
    # TGI's SSE events are written as `data:<json>` with no space, each ended by a blank line.
    return b"data:" + (obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()) + b"\n\n"


def error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": message, "error_type": kind}, status=status)


def render_chat(messages: list[dict]) -> str:
    """A ChatML rendering, as many chat templates produce."""
    parts = [f"<|im_start|>{m.get('role', 'user')}\n{m.get('content') or ''}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def make_app(engine: Engine) -> web.Application:
    s = engine.s

    async def read_json(req: web.Request) -> dict:
        try:
            body = await req.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise web.HTTPUnprocessableEntity(text=json.dumps({"error": "Failed to deserialize the JSON body",
                                                               "error_type": "validation"}),
                                              content_type="application/json")
        if not isinstance(body, dict):
            raise web.HTTPUnprocessableEntity(text=json.dumps({"error": "expected a JSON object",
                                                               "error_type": "validation"}),
                                              content_type="application/json")
        return body

    async def run_full(prompt: str, params: dict) -> tuple[str, list[dict], str]:
        text, toks, finish = "", [], "length"
        async for piece, _, fin in engine.generate(prompt, params):
            text += piece
            toks.append(token_json(piece))
            finish = fin or finish
        return text, toks, finish

    def details(prompt: str, toks: list[dict], finish: str, params: dict) -> dict:
        return {"finish_reason": finish, "generated_tokens": len(toks), "seed": params.get("seed"),
                "prefill": [], "tokens": toks, "top_tokens": None, "best_of_sequences": None}

    async def guarded(fn, req):
        try:
            return await fn(req)
        except ValidationFailed as e:
            return error(422, str(e), "validation")
        except Overloaded as e:
            return error(429, str(e), "overloaded")

    async def generate(req: web.Request, as_list: bool = False) -> web.StreamResponse:
        body = await read_json(req)
        if "inputs" not in body:
            return error(422, "Failed to deserialize the JSON body into the target type: missing field `inputs`",
                         "validation")
        params = body.get("parameters") or {}
        if body.get("stream"):
            return await generate_stream(req, body)
        text, toks, finish = await run_full(body["inputs"], params)
        if params.get("return_full_text"):
            text = body["inputs"] + text
        out = {"generated_text": text}
        if params.get("details") or as_list:
            out["details"] = details(body["inputs"], toks, finish, params)
        return web.json_response([out] if as_list else out)

    async def generate_stream(req: web.Request, body: dict | None = None) -> web.StreamResponse:
        body = body or await read_json(req)
        params = body.get("parameters") or {}
        prompt = body.get("inputs", "")
        tokens = await primed(engine.generate(prompt, params))
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
                ev["details"] = {"finish_reason": fin, "generated_tokens": n, "seed": params.get("seed"),
                                 "input_length": len(tokenize(prompt))}
            await resp.write(sse(ev))
        await resp.write_eof()
        return resp

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
        params = {"max_new_tokens": body.get("max_tokens") or 20, "seed": body.get("seed"),
                  "stop": body.get("stop") if isinstance(body.get("stop"), list) else
                  [body["stop"]] if body.get("stop") else []}
        rid, created = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:12], int(time.time())
        base = {"id": rid, "created": created, "model": s.model_id, "system_fingerprint": f"{VERSION}-native"}
        n_prompt = len(tokenize(prompt))
        if not body.get("stream"):
            text, toks, finish = await run_full(prompt, params)
            usage = {"prompt_tokens": n_prompt, "completion_tokens": len(toks), "total_tokens": n_prompt + len(toks)}
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": None},
                          "logprobs": None, "finish_reason": finish}
                return web.json_response({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return web.json_response({**base, "object": "text_completion", "choices": [choice], "usage": usage})
        tokens = await primed(engine.generate(prompt, params))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(req)
        async for piece, _, fin in tokens:
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

    async def info(_: web.Request) -> web.Response:
        return web.json_response({
            "model_id": s.model_id, "model_sha": None, "model_dtype": "torch.float16",
            "model_device_type": "cuda", "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": s.max_concurrent_requests, "max_best_of": 2, "max_stop_sequences": 4,
            "max_input_tokens": s.max_input_tokens, "max_total_tokens": s.max_total_tokens,
            "validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router",
            "version": VERSION, "sha": None, "docker_label": None,
        })

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200) if engine.ready else error(503, "Model is loading", "unhealthy")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": s.model_id, "object": "model", "created": int(engine.started), "owned_by": s.model_id}]})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=engine.metrics.render(), content_type="text/plain")

    async def reset(req: web.Request) -> web.Response:
        body = await read_json(req) if req.can_read_body else {}
        blocks = body.get("cache_blocks")
        if blocks is not None and (not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 0):
            return error(422, "cache_blocks: expected a non-negative integer", "validation")
        if engine.inflight:
            return error(409, f"{engine.inflight} requests in flight", "conflict")
        engine.reset(blocks)
        return web.json_response({"cache_blocks": s.cache_blocks})

    app = web.Application()
    app.router.add_post("/", lambda r: guarded(lambda q: generate(q, as_list=True), r))
    app.router.add_post("/generate", lambda r: guarded(generate, r))
    app.router.add_post("/generate_stream", lambda r: guarded(generate_stream, r))
    app.router.add_post("/v1/chat/completions", lambda r: guarded(chat, r))
    app.router.add_post("/v1/completions", lambda r: guarded(completions, r))
    app.router.add_get("/v1/models", models)
    app.router.add_get("/info", info)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/fake/reset", reset)
    return app


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def parse(argv: list[str] | None = None) -> tuple[Settings, str, int]:
    p = argparse.ArgumentParser(prog="text-generation-launcher (modelship fake)")
    p.add_argument("--model-id", default=os.environ.get("MODEL_ID", "bigscience/bloom-560m"))
    p.add_argument("--hostname", default="127.0.0.1")  # TGI's is 0.0.0.0; here only loopback
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", 3000)))
    p.add_argument("--max-concurrent-requests", type=int, default=128)
    p.add_argument("--max-input-tokens", "--max-input-length", type=int, default=1024)
    p.add_argument("--max-total-tokens", type=int, default=2048)
    p.add_argument("--fake-max-batch-size", type=int, default=int(env_float("TGI_FAKE_MAX_BATCH_SIZE", 32)))
    p.add_argument("--fake-token-delay-ms", type=float, default=env_float("TGI_FAKE_TOKEN_DELAY_MS", 5))
    p.add_argument("--fake-prefill-ms-per-token", type=float, default=env_float("TGI_FAKE_PREFILL_MS_PER_TOKEN", 0.5))
    p.add_argument("--fake-load-seconds", type=float, default=env_float("TGI_FAKE_LOAD_SECONDS", 0.5))
    p.add_argument("--fake-cache-blocks", type=int, default=int(env_float("TGI_FAKE_CACHE_BLOCKS", 4096)))
    p.add_argument("--fake-prefill-shared", action="store_true",
                   default=os.environ.get("TGI_FAKE_PREFILL_SHARED", "").lower() in ("1", "true", "yes"))
    args, unknown = p.parse_known_args(argv)
    if unknown:
        print(f"fake TGI: ignoring launcher flags {unknown}", file=sys.stderr)
    if args.model_id.startswith("/") and not os.path.exists(args.model_id):
        raise SystemExit(f"Error: model path {args.model_id} does not exist")
    s = Settings(args.model_id, args.max_concurrent_requests, args.max_input_tokens, args.max_total_tokens,
                 args.fake_max_batch_size, args.fake_token_delay_ms / 1000, args.fake_prefill_ms_per_token / 1000,
                 args.fake_load_seconds, args.fake_cache_blocks, args.fake_prefill_shared)
    return s, args.hostname, args.port


def main(argv: list[str] | None = None) -> None:
    settings, host, port = parse(argv)
    print(f"fake TGI {VERSION}: serving {settings.model_id} on {host}:{port}", file=sys.stderr, flush=True)
    # TGI (axum) drops a request whose client went away, generation included: so does the fake.
    web.run_app(make_app(Engine(settings)), host=host, port=port, print=None, access_log=None,
                handler_cancellation=True)


if __name__ == "__main__":
    main()

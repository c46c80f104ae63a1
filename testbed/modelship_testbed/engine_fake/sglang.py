"""An SGLang stand-in that speaks its HTTP server's protocol (test code only).

Run as the image runs SGLang: `python -m modelship_testbed.engine_fake.sglang --model-path P
--served-model-name X --host H --port N --context-length L --enable-metrics ...` (a flag the
fake does not know exits 2, as SGLang's argparse parser; `--dtype` and `--quantization` take
v0.5.20's choices). Written from SGLang's own source (python/sglang/srt:
entrypoints/http_server.py, entrypoints/openai/protocol.py and serving_chat.py /
serving_completions.py, managers/tokenizer_manager.py, metrics/collector.py), v0.5.20 (the pinned image):

- errors are flat `{"object": "error", "message", "type", "param", "code"}`; a prompt of the
  context length or more is 400 "The input (N tokens) is longer than the model's context
  length (M tokens)."; a prompt plus `max_tokens` past it is 400 "Requested token count
  exceeds ..."; a body FastAPI cannot read is 400 "Bad Request"; any `model` is served (and
  echoed back in the answer), as SGLang does without LoRA adapters, except one with a ':'
  naming an adapter (`base:adapter`, SGLang's LoRA syntax): 400 "LoRA adapter 'adapter' was
  requested, but LoRA is not enabled. ..." (type "BadRequest"; the fake answers a stream so
  too, before its first event);
- streams are `data: <json>` events with every field (pydantic's full dump): a first chunk
  with the role, content chunks, the finish reason in a chunk of its own (with
  `matched_stop`), the usage chunk when `stream_options.include_usage`, then `data: [DONE]`;
  ids are bare hex, as SGLang's request ids;
- as SGLang 0.5.20 loads the model before uvicorn starts, the fake does not listen until the
  model is "loaded" (`--fake-load-seconds`); then `/health` answers 503 during the warm-up
  (`--fake-warmup-seconds`, 0 with `--skip-server-warmup`), then 200 with no body; `/v1/models`, `/get_model_info`, and the
  native `POST /generate` (engine_fake.sglang_native);
- `/metrics` only with `--enable-metrics`, with SGLang's names, types and labels:
  `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage`,
  `sglang:cache_hit_rate`, `sglang:num_used_tokens` (scheduler: model_name, engine_type,
  tp_rank, pp_rank), `sglang:prompt_tokens_total`, `sglang:generation_tokens_total`,
  `sglang:cached_tokens_total`, `sglang:num_requests_total`, `sglang:time_to_first_token_seconds`,
  `sglang:e2e_request_latency_seconds` (tokenizer: model_name, engine_type).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .core import BLOCK, Engine, Observer, add_fake_flags, env_value, reset_handler, serve, settings_from
from .modelinfo import check_model_path, context_length, known_flags
from .openai_serving import Call, OpenAIServer, json_response, metrics_handler, openai_finish, routes
from .sglang_native import generate_route

VERSION = "0.5.20"  # the pinned image's release (lmsysorg/sglang:v0.5.20)
# v0.5.20: srt/arg_groups/fields/model.py (dtype), srt/arg_groups/choices.py QUANTIZATION_CHOICES.
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
QUANTIZATION_CHOICES = (
    "awq", "fp8", "mxfp8", "gptq", "gptq_marlin", "awq_marlin", "bitsandbytes", "gguf", "modelopt", "modelopt_fp8",
    "modelopt_fp4", "nvfp4_online", "modelopt_mixed", "petit_nvfp4", "w8a8_int8", "w8a8_fp8", "moe_wna16", "w4afp8",
    "mxfp4", "auto-round", "auto-round-int8", "compressed-tensors", "modelslim", "mxfp_w4a8", "quark",
    "quark_int4fp8_moe", "quark_mxfp4", "mlx_q4", "mlx_q8", "unquant", "humming")
IGNORED_SWITCHES = ("--trust-remote-code", "--enable-torch-compile", "--disable-cuda-graph", "--log-requests",
                    "--enable-mixed-chunk", "--enable-lora")
IGNORED_VALUED = ("--schedule-policy", "--chunked-prefill-size", "--max-total-tokens", "--max-prefill-tokens",
                  "--kv-cache-dtype", "--random-seed", "--dp-size", "--pp-size", "--attention-backend",
                  "--log-level", "--api-key", "--tokenizer-path", "--revision", "--load-format", "--chat-template",
                  "--tool-call-parser", "--reasoning-parser", "--max-loras-per-batch", "--lora-paths")
EOS_TOKEN_ID = 2  # what `matched_stop` says when the fake "model" stops on its own
TTFT_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400]
E2E_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600, 1200, 1800, 2400]


class SglangMetrics(Observer):
    def __init__(self, model_name: str):
        self.registry = r = CollectorRegistry()
        self.sched = {"model_name": model_name, "engine_type": "unified", "tp_rank": "0", "pp_rank": "0"}
        self.tok = {"model_name": model_name, "engine_type": "unified"}
        s, t = list(self.sched), list(self.tok)
        self.running = Gauge("sglang:num_running_reqs", "The number of running requests.", s, registry=r)
        self.used = Gauge("sglang:num_used_tokens", "The number of used tokens.", s, registry=r)
        self.usage = Gauge("sglang:token_usage", "The token usage.", s, registry=r)
        self.throughput = Gauge("sglang:gen_throughput", "The generation throughput (token/s).", s, registry=r)
        self.queue = Gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", s, registry=r)
        self.hit_rate = Gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", s, registry=r)
        self.prompt = Counter("sglang:prompt_tokens", "Number of prefill tokens processed.", t, registry=r)
        self.generation = Counter("sglang:generation_tokens", "Number of generation tokens processed.", t,
                                  registry=r)
        self.cached = Counter("sglang:cached_tokens", "Number of cached prompt tokens.", t, registry=r)
        self.requests = Counter("sglang:num_requests", "Number of requests processed.", t, registry=r)
        self.aborted = Counter("sglang:num_aborted_requests", "Number of requests aborted.", t, registry=r)
        self.ttft = Histogram("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              t, buckets=TTFT_BUCKETS, registry=r)
        self.e2e = Histogram("sglang:e2e_request_latency_seconds", "Histogram of End-to-end request latency in "
                             "seconds", t, buckets=E2E_BUCKETS, registry=r)
        for g in (self.running, self.used, self.usage, self.throughput, self.queue, self.hit_rate):
            g.labels(**self.sched)
        for m in (self.prompt, self.generation, self.cached, self.requests, self.aborted, self.ttft, self.e2e):
            m.labels(**self.tok)
        self.queried = self.hits = 0

    def scheduled(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.queried += prompt_tokens
        self.hits += cached_tokens
        self.cached.labels(**self.tok).inc(cached_tokens)

    def first_token(self, seconds: float) -> None:
        self.ttft.labels(**self.tok).observe(seconds)

    def finished(self, seconds: float, prompt_tokens: int, generated: int, finish: str | None) -> None:
        self.prompt.labels(**self.tok).inc(prompt_tokens)
        self.generation.labels(**self.tok).inc(generated)
        self.requests.labels(**self.tok).inc()
        if finish is None:
            self.aborted.labels(**self.tok).inc()
        self.e2e.labels(**self.tok).observe(seconds)

    def render(self, engine: Engine) -> bytes:
        self.running.labels(**self.sched).set(engine.running)
        self.queue.labels(**self.sched).set(engine.waiting)
        self.used.labels(**self.sched).set(engine.held_blocks * BLOCK)
        self.usage.labels(**self.sched).set(round(engine.kv_usage, 2))  # SGLang rounds it to 2 places
        self.hit_rate.labels(**self.sched).set(self.hits / self.queried if self.queried else 0.0)
        return generate_latest(self.registry)


class SglangServer(OpenAIServer):
    engine_name = "sglang"

    def __init__(self, engine: Engine, max_model_len: int, defaults: dict, model_path: str):
        super().__init__(engine, max_model_len, defaults)
        self.model_path = model_path

    def error(self, status, message, err_type="BadRequestError", param=None):
        return json_response({"object": "error", "message": message, "type": err_type, "param": param,
                              "code": status}, status)

    def length_message(self, prompt_tokens: int, max_tokens: int | None) -> str | None:
        """The tokenizer manager's checks, also used by /generate."""
        if prompt_tokens >= self.max_model_len:
            return (f"The input ({prompt_tokens} tokens) is longer than the model's context length "
                    f"({self.max_model_len} tokens).")
        if max_tokens is not None and prompt_tokens + max_tokens >= self.max_model_len:
            return (f"Requested token count exceeds the model's maximum context length of {self.max_model_len} "
                    f"tokens. You requested a total of {prompt_tokens + max_tokens} tokens: {prompt_tokens} tokens "
                    f"from the input messages and {max_tokens} tokens for the completion. Please reduce the "
                    f"number of tokens in the input messages or the completion to fit within the limit.")
        return None

    def length_error(self, prompt_tokens, max_tokens):
        message = self.length_message(prompt_tokens, max_tokens)
        return None if message is None else self.error(400, message)

    def messages_error(self, messages):
        return None if messages else self.error(400, "Messages cannot be empty.")

    def model_error(self, body):
        """SGLang reads `base:adapter` as a LoRA adapter (serving_base._parse_model_parameter),
        refused when LoRA is not enabled (tokenizer_manager._validate_and_resolve_lora)."""
        model = body.get("model")
        adapter = model.split(":", 1)[1].strip() if isinstance(model, str) and ":" in model else ""
        if not adapter:
            return None
        return self.error(400, f"LoRA adapter '{adapter}' was requested, but LoRA is not enabled. Please launch the "
                               f"server with --enable-lora flag and preload adapters using --lora-paths or "
                               f"/load_lora_adapter endpoint.", "BadRequest")

    def response_model(self, body):
        return body.get("model") or "default"

    def matched_stop(self, request, finish: str | None):
        """SGLang's `matched_stop`: the EOS token id, or the stop string that ended the answer."""
        if finish == "eos":
            return EOS_TOKEN_ID
        return next(iter(request.stops), None) if finish == "stop_sequence" else None

    def chunk(self, c: Call, choice: dict) -> dict:
        kind = "chat.completion.chunk" if c.chat else "text_completion"
        return {"id": c.id, "object": kind, "created": c.created, "model": c.model, "choices": [choice],
                "usage": None}

    def delta(self, role=None, content=None) -> dict:
        return {"role": role, "content": content, "reasoning_content": None, "tool_calls": None}

    def stream_start(self, c):
        if not c.chat:
            return []
        return [self.chunk(c, {"index": 0, "delta": self.delta("assistant", ""), "logprobs": None,
                               "finish_reason": None, "matched_stop": None})]

    def stream_token(self, c, piece, finish):
        if c.chat:  # the finish reason comes in a chunk of its own (stream_end)
            return [self.chunk(c, {"index": 0, "delta": self.delta(content=piece), "logprobs": None,
                                   "finish_reason": None, "matched_stop": None})]
        return [self.chunk(c, {"index": 0, "text": piece, "logprobs": None, "finish_reason": openai_finish(finish),
                               "matched_stop": self.matched_stop(c.request, finish)})]

    def stream_end(self, c, finish):
        if not c.chat:
            return []
        return [self.chunk(c, {"index": 0, "delta": self.delta(), "logprobs": None,
                               "finish_reason": openai_finish(finish),
                               "matched_stop": self.matched_stop(c.request, finish)})]

    def usage(self, c: Call) -> dict:
        return {**c.usage(), "prompt_tokens_details": None, "reasoning_tokens": 0}

    def usage_chunk(self, c):
        return {**self.chunk(c, {}), "choices": [], "usage": self.usage(c)}

    def whole(self, c, text, finish):
        end = {"logprobs": None, "finish_reason": openai_finish(finish),
               "matched_stop": self.matched_stop(c.request, finish), "hidden_states": None}
        if c.chat:
            message = {"role": "assistant", "content": text, "reasoning_content": None, "tool_calls": None}
            choice, kind = {"index": 0, "message": message, **end}, "chat.completion"
        else:
            choice, kind = {"index": 0, "text": text, **end}, "text_completion"
        return {"id": c.id, "object": kind, "created": c.created, "model": c.model, "choices": [choice],
                "usage": self.usage(c)}

    def models(self) -> dict:
        card = {"id": self.engine.s.model_id, "object": "model", "created": int(time.time()), "owned_by": "sglang",
                "root": self.model_path, "max_model_len": self.max_model_len}
        return {"object": "list", "data": [card]}


def make_app(server: SglangServer, enable_metrics: bool) -> web.Application:
    engine = server.engine

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200 if engine.ready else 503)

    async def models(_: web.Request) -> web.Response:
        return json_response(server.models())

    async def model_info(_: web.Request) -> web.Response:
        return json_response({"model_path": server.model_path, "tokenizer_path": server.model_path,
                              "is_generation": True, "preferred_sampling_params": server.defaults or None,
                              "weight_version": "default"})

    app = web.Application()
    routes(app, server)
    app.router.add_post("/generate", generate_route(server))
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/health_generate", health)
    app.router.add_get("/get_model_info", model_info)
    if enable_metrics:
        app.router.add_get("/metrics", metrics_handler(engine))
    app.router.add_post("/fake/reset", reset_handler(engine, lambda st, msg, kind: server.error(st, msg, kind)))
    return app


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sglang.launch_server (modelship fake)")
    p.add_argument("--model-path", "--model", default="qwen/qwen2.5-0.5b-instruct")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--max-running-requests", type=int, default=None)
    p.add_argument("--tp-size", "--tensor-parallel-size", type=int, default=1)
    p.add_argument("--mem-fraction-static", type=float, default=None)
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--quantization", default=None, choices=QUANTIZATION_CHOICES)
    p.add_argument("--enable-metrics", action="store_true")
    p.add_argument("--disable-radix-cache", action="store_true")
    p.add_argument("--preferred-sampling-params", type=json.loads, default=None)
    p.add_argument("--skip-server-warmup", action="store_true")
    known_flags(p, IGNORED_SWITCHES, IGNORED_VALUED)
    add_fake_flags(p, ("SGLANG_FAKE_",), None)
    p.add_argument("--fake-warmup-seconds", type=float, default=float(env_value(("SGLANG_FAKE_",), "WARMUP_SECONDS",
                                                                                0.2)))
    return p


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, SglangServer]:
    args = parser().parse_args(argv)
    check_model_path("SGLang", args.model_path)
    name = args.served_model_name or args.model_path
    max_len = args.context_length or context_length(args.model_path)
    s = settings_from(args, name, 1 << 30, args.max_running_requests or 256)
    if args.disable_radix_cache:
        s.cache_blocks = 0
    engine = Engine(s, functools.partial(SglangMetrics, name))
    return args, SglangServer(engine, max_len, dict(args.preferred_sampling_params or {}), args.model_path)


def main(argv: list[str] | None = None) -> None:
    args, server = parse(argv)
    engine = server.engine
    print(f"fake SGLang {VERSION}: loading {server.model_path} for {engine.s.load_seconds} s", file=sys.stderr,
          flush=True)
    time.sleep(engine.s.load_seconds)  # SGLang 0.5.20 loads the model before uvicorn starts
    engine.s.load_seconds = 0 if args.skip_server_warmup else args.fake_warmup_seconds  # then /health: 503
    engine.started = time.monotonic()
    print(f"fake SGLang: serving {engine.s.model_id} on {args.host}:{args.port}", file=sys.stderr, flush=True)
    serve(make_app(server, args.enable_metrics), args.host, args.port)


if __name__ == "__main__":
    main()

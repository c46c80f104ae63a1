"""A vLLM stand-in that speaks the OpenAI-compatible server's protocol (test code only).

Run as the image runs vLLM: `python -m modelship_testbed.engine_fake.vllm serve <model>
--served-model-name X --host H --port N --max-model-len L ...`. Flags are parsed as vLLM's
FlexibleArgumentParser does (`--max_model_len` is `--max-model-len`); a flag the fake does not
know exits 2, `--dtype` takes vLLM's choices, and a `--quantization` outside v0.29.0's
QuantizationMethods stops the start with vLLM's message. Written from vLLM's own source (vllm/entrypoints/openai: the
api_server, the chat and completion serving, engine/protocol.py; vllm/v1/metrics/loggers.py):

- errors are `{"error": {"message", "type", "param", "code"}}` (the shape since v0.10.2; flat
  before); an unknown `model` is 404 "The model `x` does not exist."; a request past
  `--max-model-len` is 400 with the wording of v0.18 to v0.30; a body FastAPI cannot read
  (bad JSON, a missing field) is 400 "Bad Request";
- streams are `data: <json>` events (chat chunks dumped with pydantic's exclude_unset: a
  first chunk with the role and empty content, then content, the finish reason on the last),
  `stream_options.include_usage` adds a chunk with empty `choices` and the usage, then
  `data: [DONE]`;
- `/v1/models` lists the served name with `root` (the model path), `max_model_len` and
  `permission`; `/health` is 200 with no body; the server does not listen until the model
  is "loaded" (`--fake-load-seconds`), as vLLM loads before it starts its HTTP server;
- `/metrics` has vLLM's names, types and labels (`model_name`, `engine="0"`):
  `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`,
  `vllm:prefix_cache_queries_total`/`_hits_total`, `vllm:prompt_tokens_total`,
  `vllm:generation_tokens_total`, `vllm:request_success_total`, `vllm:time_to_first_token_seconds`, ...
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import uuid

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .core import Engine, Observer, add_fake_flags, reset_handler, serve, settings_from
from .modelinfo import check_model_path, context_length, known_flags, parse_len
from .openai_serving import Call, OpenAIServer, json_response, metrics_handler, openai_finish, routes

VERSION = "0.29.0"  # the pinned image's release (vllm/vllm-openai:v0.29.0), whose protocol this follows
# v0.29.0: vllm/config/model.py ModelDType; model_executor/layers/quantization/__init__.py QuantizationMethods.
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
QUANTIZATION_METHODS = (
    "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "modelopt_mxfp8",
    "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin", "humming", "compressed-tensors",
    "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8", "online",
    "fp8_per_tensor", "fp8_per_block", "fp8_per_channel", "int8_per_channel_weight_only", "nvfp4_per_token",
    "mxfp8")
IGNORED_SWITCHES = ("--enforce-eager", "--trust-remote-code", "--disable-log-requests", "--disable-log-stats",
                    "--enable-chunked-prefill", "--no-enable-chunked-prefill", "--enable-auto-tool-choice",
                    "--disable-frontend-multiprocessing")
IGNORED_VALUED = ("--max-num-batched-tokens", "--kv-cache-dtype", "--seed", "--swap-space", "--tokenizer",
                  "--revision", "--download-dir", "--load-format", "--block-size", "--pipeline-parallel-size",
                  "--data-parallel-size", "--api-key", "--generation-config", "--uvicorn-log-level",
                  "--max-logprobs", "--chat-template", "--tool-call-parser", "--reasoning-parser",
                  "--cpu-offload-gb", "--distributed-executor-backend", "--limit-mm-per-prompt")
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0]


def token_buckets(max_len: int) -> list[float]:
    """vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to max_len."""
    out, exp = [], 0
    while True:
        for m in (1, 2, 5):
            v = m * 10 ** exp
            if v > max_len:
                return out
            out.append(v)
        exp += 1


class VllmMetrics(Observer):
    def __init__(self, model_name: str, max_model_len: int):
        self.registry = r = CollectorRegistry()
        self.labels = {"model_name": model_name, "engine": "0"}
        names = list(self.labels)
        self.running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                             names, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                             names, registry=r)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", names, registry=r)
        self.queries = Counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried "
                               "tokens.", names, registry=r)
        self.hits = Counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                            names, registry=r)
        self.preemptions = Counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                                   names, registry=r)
        self.prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", names, registry=r)
        self.generation = Counter("vllm:generation_tokens", "Number of generation tokens processed.", names,
                                  registry=r)
        self.success = Counter("vllm:request_success", "Count of successfully processed requests.",
                               names + ["finished_reason"], registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              names, buckets=TTFT_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             names, buckets=E2E_BUCKETS, registry=r)
        tokens = token_buckets(max_model_len)
        self.req_prompt = Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                                    names, buckets=tokens, registry=r)
        self.req_generation = Histogram("vllm:request_generation_tokens", "Number of generation tokens processed.",
                                        names, buckets=tokens, registry=r)
        for metric in (self.running, self.waiting, self.kv, self.queries, self.hits, self.preemptions, self.prompt,
                       self.generation, self.ttft, self.e2e, self.req_prompt, self.req_generation):
            metric.labels(**self.labels)  # present from the start, as in vLLM
        for reason in ("stop", "length", "abort"):
            self.success.labels(**self.labels, finished_reason=reason)

    def scheduled(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.queries.labels(**self.labels).inc(prompt_tokens)
        self.hits.labels(**self.labels).inc(cached_tokens)
        self.prompt.labels(**self.labels).inc(prompt_tokens)

    def first_token(self, seconds: float) -> None:
        self.ttft.labels(**self.labels).observe(seconds)

    def finished(self, seconds: float, prompt_tokens: int, generated: int, finish: str | None) -> None:
        self.generation.labels(**self.labels).inc(generated)
        self.success.labels(**self.labels, finished_reason=openai_finish(finish) or "abort").inc()
        self.e2e.labels(**self.labels).observe(seconds)
        self.req_prompt.labels(**self.labels).observe(prompt_tokens)
        self.req_generation.labels(**self.labels).observe(generated)

    def render(self, engine: Engine) -> bytes:
        self.running.labels(**self.labels).set(engine.running)
        self.waiting.labels(**self.labels).set(engine.waiting)
        self.kv.labels(**self.labels).set(engine.kv_usage)
        return generate_latest(self.registry)


class VllmServer(OpenAIServer):
    engine_name = "vllm"

    def __init__(self, engine: Engine, max_model_len: int, defaults: dict, root: str, names: list[str]):
        super().__init__(engine, max_model_len, defaults)
        self.root, self.names = root, names  # vLLM answers to each --served-model-name

    def error(self, status, message, err_type="BadRequestError", param=None):
        return json_response({"error": {"message": message, "type": err_type, "param": param, "code": status}},
                             status)

    def model_error(self, body):
        model = body.get("model")
        if model is None or model in self.names:
            return None
        return self.error(404, f"The model `{model}` does not exist.", "NotFoundError", "model")

    def length_error(self, prompt_tokens, max_tokens):
        asked = max_tokens or 0
        if prompt_tokens + asked <= self.max_model_len and not (max_tokens is None and
                                                                  prompt_tokens >= self.max_model_len):
            return None
        return self.error(400, f"This model's maximum context length is {self.max_model_len} tokens. However, "
                               f"you requested {asked} output tokens and your prompt contains {prompt_tokens} input "
                               f"tokens, for a total of {prompt_tokens + asked} tokens. Please reduce the length of "
                               f"the input prompt or the number of requested output tokens. "
                               f"(parameter=input_tokens, value={prompt_tokens})", param="input_tokens")

    def call_id(self, chat):
        return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex

    def response_model(self, body):
        return self.names[0]  # OpenAIServingModels.model_name(): the first name, whichever was asked

    def base(self, c: Call) -> dict:
        return {"id": c.id, "object": "chat.completion.chunk" if c.chat else "text_completion",
                "created": c.created, "model": c.model}

    def stream_start(self, c):
        if not c.chat:
            return []
        return [{**self.base(c), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "logprobs": None, "finish_reason": None}],
                 "prompt_token_ids": None}]  # set (to None) unless return_token_ids, so dumped

    def stream_token(self, c, piece, finish):
        if not c.chat:  # completion chunks are dumped whole (exclude_unset=False)
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": openai_finish(finish),
                      "stop_reason": self.stop_reason(c, finish), "prompt_token_ids": None, "token_ids": None}
            return [{**self.base(c), "choices": [choice], "usage": None, "system_fingerprint": None,
                     "metrics": None}]
        choice = {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": openai_finish(finish)}
        if finish:
            choice["stop_reason"] = self.stop_reason(c, finish)
        choice["token_ids"] = None
        return [{**self.base(c), "choices": [choice]}]

    def stop_reason(self, c: Call, finish: str | None):
        """The stop string that ended the answer (None for EOS and length), as vLLM's stop_reason."""
        return next(iter(c.request.stops), None) if finish == "stop_sequence" else None

    def usage_chunk(self, c):
        return {**self.base(c), "choices": [], "usage": c.usage()}

    def whole(self, c, text, finish):
        usage = {**c.usage(), "prompt_tokens_details": None}
        head = {"id": c.id, "object": "chat.completion" if c.chat else "text_completion", "created": c.created,
                "model": c.model}
        end = {"finish_reason": openai_finish(finish), "stop_reason": self.stop_reason(c, finish),
               "token_ids": None}
        tail = {"service_tier": None, "system_fingerprint": None, "usage": usage}
        if c.chat:
            message = {"role": "assistant", "content": text, "refusal": None, "annotations": None, "audio": None,
                       "function_call": None, "tool_calls": [], "reasoning": None}
            choice = {"index": 0, "message": message, "logprobs": None, **end}
            return {**head, "choices": [choice], **tail, "prompt_logprobs": None, "prompt_token_ids": None,
                    "kv_transfer_params": None}
        choice = {"index": 0, "text": text, "logprobs": None, **end, "prompt_logprobs": None,
                  "prompt_token_ids": None, "routed_experts": None}
        return {**head, "choices": [choice], **tail, "kv_transfer_params": None, "ec_transfer_params": None,
                "metrics": None}

    def models(self) -> dict:
        now = int(time.time())
        permission = {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": now,
                      "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                      "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                      "organization": "*", "group": None, "is_blocking": False}
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": now, "owned_by": "vllm", "root": self.root, "parent": None,
             "max_model_len": self.max_model_len, "permission": [permission]} for name in self.names]}


def make_app(server: VllmServer) -> web.Application:
    engine = server.engine

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200)

    async def models(_: web.Request) -> web.Response:
        return json_response(server.models())

    async def version(_: web.Request) -> web.Response:
        return json_response({"version": VERSION})

    def reset_error(status, message, kind):
        return server.error(status, message, kind)

    app = web.Application()
    routes(app, server)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_handler(engine))
    app.router.add_get("/version", version)
    app.router.add_post("/fake/reset", reset_handler(engine, reset_error))
    return app


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm serve (modelship fake)")
    p.add_argument("model_tag", nargs="?")
    p.add_argument("--model", default=None)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--host", default="127.0.0.1")  # vLLM's default listens everywhere; here only loopback
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-model-len", type=parse_len, default=None)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--dtype", default="auto", choices=DTYPES)
    p.add_argument("--quantization", "-q", default=None)  # (a string: vLLM checks it once the model is read)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--override-generation-config", type=json.loads, default=None)
    known_flags(p, IGNORED_SWITCHES, IGNORED_VALUED)
    add_fake_flags(p, ("VLLM_FAKE_",), None)
    return p


def flexible(argv: list[str]) -> list[str]:
    """FlexibleArgumentParser's spelling: underscores in a long flag's name are dashes."""
    out = []
    for a in argv:
        if a.startswith("--") and "_" in a.split("=", 1)[0]:
            name, eq, value = a.partition("=")
            a = name.replace("_", "-") + eq + value
        out.append(a)
    return out


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """The command line as vLLM reads it: exits 2 on a flag it does not know or a --dtype
    outside its choices, and stops (as vLLM's ModelConfig does) on an unknown quantization."""
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    args = parser().parse_args(flexible(argv))
    if args.quantization is not None and args.quantization not in QUANTIZATION_METHODS:
        raise SystemExit(f"fake vLLM: ValueError: Unknown quantization method: {args.quantization}. Must be one "
                         f"of {list(QUANTIZATION_METHODS)}.")
    return args


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, VllmServer]:
    args = parse_cli(list(sys.argv[1:] if argv is None else argv))
    model = args.model_tag or args.model or "facebook/opt-125m"
    check_model_path("vLLM", model)
    max_len = args.max_model_len or context_length(model)
    names = args.served_model_name or [model]
    name = names[0]
    s = settings_from(args, name, 1 << 30, args.max_num_seqs)
    if not args.enable_prefix_caching:
        s.cache_blocks = 0
    defaults = dict(args.override_generation_config or {})
    if "max_new_tokens" in defaults:  # vLLM takes the generation config's name for max_tokens
        defaults["max_tokens"] = defaults.pop("max_new_tokens")
    engine = Engine(s, functools.partial(VllmMetrics, name, max_len))
    return args, VllmServer(engine, max_len, defaults, model, names)


def main(argv: list[str] | None = None) -> None:
    args, server = parse(argv)
    s = server.engine.s
    print(f"fake vLLM {VERSION}: loading {server.root} for {s.load_seconds} s", file=sys.stderr, flush=True)
    time.sleep(s.load_seconds)  # vLLM loads the model before its HTTP server listens
    s.load_seconds = 0
    print(f"fake vLLM: serving {s.model_id} on {args.host}:{args.port}", file=sys.stderr, flush=True)
    serve(make_app(server), args.host, args.port)


if __name__ == "__main__":
    main()

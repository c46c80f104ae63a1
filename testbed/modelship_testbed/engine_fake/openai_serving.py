"""The OpenAI-compatible serving that the vLLM and SGLang fakes share: reading a request,
validating it, generating with the core, and writing the answer whole or as an SSE stream
ended by `data: [DONE]`. What differs between the engines (the JSON of each chunk, the error
shape and wording, the model-name check, the metrics) is in their subclasses (`vllm.py`,
`sglang.py`), written from each engine's own source.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from .core import Engine, Overloaded, Request, primed, read_body, render_chat, tokenize

SSE_TYPE = "text/event-stream; charset=utf-8"  # Starlette's StreamingResponse adds the charset


def dumps(obj) -> str:
    """JSON as FastAPI/pydantic/orjson write it: compact, UTF-8 left as is."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def json_response(obj, status: int = 200) -> web.Response:
    return web.Response(text=dumps(obj), status=status, content_type="application/json")


@dataclass
class Call:
    """One OpenAI request as it runs: what the chunk builders need."""
    id: str
    created: int
    model: str
    chat: bool
    request: Request
    generated: int = 0

    def usage(self) -> dict:
        n = len(self.request.tokens)
        return {"prompt_tokens": n, "total_tokens": n + self.generated, "completion_tokens": self.generated}


class OpenAIServer:
    """The routes; subclasses give the engine's shapes."""

    engine_name = "engine"

    def __init__(self, engine: Engine, max_model_len: int, defaults: dict | None = None):
        self.engine, self.max_model_len, self.defaults = engine, max_model_len, dict(defaults or {})

    # --- the engine's shapes (subclasses) -------------------------------------------------
    def error(self, status: int, message: str, err_type: str = "BadRequestError", param: str | None = None):
        raise NotImplementedError

    def model_error(self, body: dict) -> web.Response | None:
        return None

    def length_error(self, prompt_tokens: int, max_tokens: int | None) -> web.Response | None:
        return None

    def call_id(self, chat: bool) -> str:
        return uuid.uuid4().hex

    def response_model(self, body: dict) -> str:
        return self.engine.s.model_id

    def stream_start(self, c: Call) -> list[dict]:
        return []

    def stream_token(self, c: Call, piece: str, finish: str | None) -> list[dict]:
        raise NotImplementedError

    def stream_end(self, c: Call, finish: str) -> list[dict]:
        return []

    def usage_chunk(self, c: Call) -> dict:
        raise NotImplementedError

    def whole(self, c: Call, text: str, finish: str) -> dict:
        raise NotImplementedError

    def invalid(self, loc, kind: str, msg: str, given, where: str = "body") -> web.Response:
        """FastAPI's RequestValidationError, which both engines answer with 400 "Bad Request" and
        the message `f"{str(exc)} {exc.errors()}"` (FastAPI's own text of the errors)."""
        errors = [{"type": kind, "loc": (where, loc), "msg": msg, "input": given}]
        return self.error(400, f"1 validation error:\n  {errors[0]!r}\n {errors!r}", "Bad Request")

    # --- the flow ---------------------------------------------------------------------------
    async def body(self, req: web.Request) -> dict | web.Response:
        media_type = req.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":  # both engines' validate_json_request
            return self.invalid("content-type", "value_error",
                                "Unsupported Media Type: Only 'application/json' is allowed", None, "header")
        try:
            body = await read_body(req)
        except ValueError:
            return self.invalid(0, "json_invalid", "JSON decode error", {})
        if not isinstance(body, dict):
            return self.invalid("", "model_attributes_type", "Input should be a valid dictionary", body)
        return body

    async def chat(self, req: web.Request) -> web.StreamResponse:
        body = await self.body(req)
        if isinstance(body, web.Response):
            return body
        messages = body.get("messages")
        if not isinstance(messages, list):
            return self.invalid("messages", "missing", "Field required", body)
        if (bad := self.messages_error(messages)) is not None:
            return bad
        return await self.complete(req, body, render_chat(messages), chat=True)

    def messages_error(self, messages: list) -> web.Response | None:
        return None

    async def completions(self, req: web.Request) -> web.StreamResponse:
        body = await self.body(req)
        if isinstance(body, web.Response):
            return body
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            return self.invalid("prompt", "missing", "Field required", body)
        return await self.complete(req, body, prompt, chat=False)

    def max_tokens(self, body: dict, chat: bool) -> int | None:
        asked = body.get("max_completion_tokens") if chat else None
        asked = asked if asked is not None else body.get("max_tokens")
        if asked is None:
            asked = self.defaults.get("max_tokens", self.defaults.get("max_new_tokens"))
        return int(asked) if asked is not None else None

    def request(self, body: dict, prompt: str, max_tokens: int | None) -> Request:
        tokens = tokenize(prompt)
        stop = body.get("stop", self.defaults.get("stop"))
        stops = tuple(stop) if isinstance(stop, list) else (stop,) if stop else ()
        seed = body.get("seed", self.defaults.get("seed"))
        if max_tokens is None:  # the model stops on its own, within the context
            room = max(1, self.max_model_len - len(tokens))
            return Request(prompt, tokens, min(self.engine.s.default_tokens, room), eos=True, stops=stops, seed=seed)
        return Request(prompt, tokens, max_tokens, stops=stops, seed=seed)

    async def complete(self, req: web.Request, body: dict, prompt: str, chat: bool) -> web.StreamResponse:
        if (bad := self.model_error(body)) is not None:
            return bad
        max_tokens = self.max_tokens(body, chat)
        if max_tokens is not None and max_tokens < 1:
            return self.error(400, f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")
        if (bad := self.length_error(len(tokenize(prompt)), max_tokens)) is not None:
            return bad
        c = Call(self.call_id(chat), int(time.time()), self.response_model(body), chat,
                 self.request(body, prompt, max_tokens))
        try:
            if not body.get("stream"):
                return await self.run_whole(c)
            opts = body.get("stream_options") or {}
            return await self.run_stream(req, c, bool(isinstance(opts, dict) and opts.get("include_usage")))
        except Overloaded as e:
            return self.error(503, str(e), "ServiceUnavailableError")

    async def run_whole(self, c: Call) -> web.Response:
        text, finish = "", "length"
        async for piece, _, fin in self.engine.generate(c.request):
            text += piece
            c.generated += 1
            finish = fin or finish
        return json_response(self.whole(c, text, finish))

    async def run_stream(self, req: web.Request, c: Call, include_usage: bool) -> web.StreamResponse:
        tokens = await primed(self.engine.generate(c.request))
        resp = web.StreamResponse(headers={"Content-Type": SSE_TYPE})
        await resp.prepare(req)
        for chunk in self.stream_start(c):
            await resp.write(sse(chunk))
        finish = "length"
        async for piece, _, fin in tokens:
            c.generated += 1
            finish = fin or finish
            for chunk in self.stream_token(c, piece, fin):
                await resp.write(sse(chunk))
        for chunk in self.stream_end(c, finish):
            await resp.write(sse(chunk))
        if include_usage:
            await resp.write(sse(self.usage_chunk(c)))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def sse(obj) -> bytes:
    """One event as vLLM and SGLang write it: `data: <json>` and a blank line."""
    return f"data: {dumps(obj)}\n\n".encode()


def openai_finish(finish: str | None) -> str | None:
    return {"eos": "stop", "stop_sequence": "stop", "length": "length"}.get(finish) if finish else None


def routes(app: web.Application, server: OpenAIServer) -> None:
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_post("/v1/completions", server.completions)


def metrics_handler(engine: Engine):
    """`GET /metrics` as vLLM's and SGLang's prometheus_client pages are served."""
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=engine.metrics.render(engine),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    return metrics

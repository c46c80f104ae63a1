"""SGLang's native `POST /generate` (http_server.generate_request): `{"text", "sampling_params",
"stream"}` in; `{"text", "meta_info"}` out, or (streamed) `data: <json>` events each with the
text so far, then `data: [DONE]`; a refused request is 400 `{"error": {"message": ...}}`."""

from __future__ import annotations

import time
import uuid

from aiohttp import web

from .core import Overloaded, primed, read_body, tokenize
from .openai_serving import SSE_TYPE, dumps, json_response

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's SamplingParams default


def refused(message: str, status: int = 400) -> web.Response:
    return json_response({"error": {"message": message}}, status)


def meta(server, rid: str, request, generated: int, finish: str | None, start: float) -> dict:
    if finish is None:
        reason = None
    elif finish == "length":
        reason = {"type": "length", "length": generated}
    else:
        reason = {"type": "stop", "matched": server.matched_stop(request, finish)}
    return {"id": rid, "finish_reason": reason, "prompt_tokens": len(request.tokens), "weight_version": "default",
            "completion_tokens": generated, "cached_tokens": request.cached,
            "e2e_latency": round(time.monotonic() - start, 6)}


def generate_route(server):
    async def generate(req: web.Request) -> web.StreamResponse:
        try:
            body = await read_body(req)
        except ValueError as e:
            return refused(f"Invalid JSON: {e}")
        text = body.get("text") if isinstance(body, dict) else None
        if isinstance(text, list):
            text = text[0] if text else None
        if not isinstance(text, str):
            return refused("Either text, input_ids or input_embeds should be provided.")
        params = {**server.defaults, **(body.get("sampling_params") or {})}
        max_new = params.get("max_new_tokens")
        if (message := server.length_message(len(tokenize(text)), max_new)) is not None:
            return refused(message)
        request = server.request(params, text, None if max_new is None else int(max_new))
        if max_new is None:
            request.max_new = min(request.max_new, DEFAULT_MAX_NEW_TOKENS)
        try:
            return await run(req, request, bool(body.get("stream")))
        except Overloaded as e:
            return refused(str(e), 503)

    async def run(req: web.Request, request, stream: bool) -> web.StreamResponse:
        rid, start, out, n, finish = uuid.uuid4().hex, time.monotonic(), "", 0, None
        tokens = await primed(server.engine.generate(request))
        resp = None
        if stream:
            resp = web.StreamResponse(headers={"Content-Type": SSE_TYPE})
            await resp.prepare(req)
        async for piece, _, fin in tokens:
            out, n, finish = out + piece, n + 1, fin or finish
            if resp is not None:
                event = {"text": out, "meta_info": meta(server, rid, request, n, fin, start)}
                await resp.write(f"data: {dumps(event)}\n\n".encode())
        if resp is None:
            return json_response({"text": out, "meta_info": meta(server, rid, request, n, finish, start)})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    return generate

"""The router's answers that are not an engine's: errors in OpenAI's shape, and whole
answers written in one go."""

from __future__ import annotations

import orjson


class ClientGone(Exception):
    """The client disconnected before its request was read."""


class ErrorAnswer(Exception):
    """An answer in OpenAI's error shape (`{"error": {"message", "type", "param", "code"}}`),
    raised anywhere on a request's way and written by the app."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None, fallback: bool = False, param: str | None = None):
        super().__init__(message)
        self.param = param  # the request's field at fault, as OpenAI says it (`messages[1].role`)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers or []
        self.fallback = fallback  # a model's failure before its first byte: its fallbacks may answer instead

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code or self.kind}})


async def respond(send, status: int, body: bytes, headers: list | None = None,
                  content_type: bytes = b"application/json") -> None:
    """A whole answer, with its length: one start, one body."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})

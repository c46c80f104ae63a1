"""What `chat` and `bench` share about the router's answers: its streamed events (SSE `data:`
lines, ending with `[DONE]`) and its errors (OpenAI's `{"error": {...}}`, with `Retry-After`
when a model is starting or a quota is spent), each said in one line."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Iterable, Iterator

CHAT_PATH = "/v1/chat/completions"


class RouterError(Exception):
    """The router (or the engine behind it) said no: a status, its message, when to retry."""

    def __init__(self, status: int, message: str, retry_after: str | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after

    def line(self) -> str:
        what = {404: "not found", 429: "too many requests", 503: "not ready"}.get(self.status, "error")
        retry = f"; retry in {self.retry_after} s" if self.retry_after else ""
        return f"{what} ({self.status}): {self.message}{retry}"


def error_from(status: int, headers: Any, body: bytes) -> RouterError:
    """The one-line error of an answer that is not a 200."""
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        parsed = {}
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        message = error.get("message") or str(error)
    elif isinstance(error, str):  # TGI's own shape: {"error": "...", "error_type": "..."}
        message = error
    else:
        message = body.decode("utf-8", "replace").strip()[:200] or "no message"
    return RouterError(status, message, headers.get("retry-after"))


def event_data(line: str) -> dict | None:
    """The JSON of one `data:` line (`{"done": true}` for `[DONE]`); None for any other line."""
    if not line.startswith("data:"):
        return None
    data = line[len("data:"):].strip()
    if data == "[DONE]":
        return {"done": True}
    try:
        event = json.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


_DONE: dict = {"done": True}


def _step(line: str) -> dict | None:
    """One line of the stream: its event, checked (an error in it raises); None for a line that
    is no event; `_DONE` at `[DONE]`. What `events` and `aevents` share."""
    event = event_data(line)
    if event is None or event.get("done") is True:
        return _DONE if event is not None else None
    check(event)
    return event


def events(lines: Iterable[str]) -> Iterator[dict]:
    for line in lines:
        event = _step(line)
        if event is _DONE:
            return
        if event is not None:
            yield event


async def aevents(lines: AsyncIterator[str]) -> AsyncIterator[dict]:
    async for line in lines:
        event = _step(line)
        if event is _DONE:
            return
        if event is not None:
            yield event


def check(event: dict) -> None:
    """An error sent inside the stream (after its 200) is an error all the same."""
    error = event.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise RouterError(500, message or "error in the stream")


def delta_text(event: dict) -> str:
    return "".join((c.get("delta") or {}).get("content") or "" for c in event.get("choices") or [])

"""The tokens a request used, read from its answer on the way through: what the usage
counters, the access log and the tokens-per-minute limits count.

- A whole answer (not streamed) of the OpenAI routes carries `usage` (llama.cpp and TGI both
  send it): exact. TGI's `/generate` says `details.generated_tokens` when asked for details.
- A streamed answer: llama.cpp puts `usage` in its last event whether or not the client asked
  (`stream_options.include_usage`); TGI does when asked, and its `/generate_stream` ends with
  `details.generated_tokens`. The router looks for it in each chunk (a substring test) and
  reads the event that has it: exact. Where no event says it, the generated tokens are the
  events counted, `[DONE]` aside (one token per event, as both engines send them: over by
  the one event that carries only the role or the finish reason, where an engine sends one;
  under where an engine sends several tokens in one event).
- The prompt's tokens, where the answer does not say them: its characters / 4 (the usual
  rule for English text with BPE vocabularies; off by tens of percent for other text).

The router never adds `stream_options` to a request: the extra event it makes the engine send
has no `choices`, which clients that did not ask for it may not expect.
"""

from __future__ import annotations

import orjson

CHARS_PER_TOKEN = 4


def _read(found: dict, call) -> bool:
    """Fill `call`'s tokens from an answer's `usage` (OpenAI) or `details` (TGI); False if neither."""
    u = found.get("usage")
    if isinstance(u, dict):
        p, c = u.get("prompt_tokens"), u.get("completion_tokens")
        if isinstance(p, int) and isinstance(c, int):
            call.prompt_tokens, call.completion_tokens = p, c
            return True
    d = found.get("details")
    if isinstance(d, dict) and isinstance(d.get("generated_tokens"), int):
        call.completion_tokens = d["generated_tokens"]
        if isinstance(d.get("input_length"), int):
            call.prompt_tokens = d["input_length"]
        return True
    return False


def whole(call, body: bytes) -> None:
    """A whole JSON answer's usage (TGI's `/generate` with several answers is a list: their sum)."""
    if b'"usage"' not in body and b'"generated_tokens"' not in body:
        return
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if isinstance(found, dict):
        _read(found, call)


def streamed(call, tail: bytes, events: int, last: bytes) -> None:
    """A stream's usage: the last chunk that said it (`tail`), else its events counted (but
    `data: [DONE]`, in the `last` chunk)."""
    if tail:
        for line in reversed(tail.split(b"\n")):
            if line.startswith(b"data:") and (b'"usage":{' in line or b'"generated_tokens":' in line):
                try:
                    found = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    break  # (an event split over two chunks: counted below)
                if isinstance(found, dict) and _read(found, call):
                    return
                break
    if events:
        call.completion_tokens = max(0, events - (b"[DONE]" in last))


def prompt_estimate(text_chars: int) -> int:
    """Tokens of a prompt of this many characters, where no answer says them."""
    return (text_chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN

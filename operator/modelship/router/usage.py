"""The tokens a request used, read from its answer on the way through: what the usage
counters, the access log and the tokens-per-minute limits count.

- A whole answer (not streamed) of the OpenAI routes carries `usage` (every engine sends it;
  vLLM and SGLang may nest `prompt_tokens_details` in it): exact. TGI's `/generate` says
  `details.generated_tokens` when asked for details.
- A streamed answer: llama.cpp puts `usage` in its last event whether or not the client asked
  (`stream_options.include_usage`); TGI, vLLM and SGLang do when asked (vLLM and SGLang in an
  event of its own, with empty `choices`, before `[DONE]`; their other events say
  `"usage": null` or nothing), and TGI's `/generate_stream` ends with
  `details.generated_tokens`. The router looks for it in each chunk (a substring test) and
  reads the event that has it: exact. Where no event says it, the generated tokens are the
  events counted, `[DONE]` aside (one token per event, as the engines send them: over by
  the events that carry only the role or the finish reason, where an engine sends them;
  under where an engine sends several tokens in one event).
- The prompt's tokens, where the answer does not say them: the request body's bytes / 4 (the
  usual rule for English text with BPE vocabularies, plus the JSON around it: over by the
  field names and quoting, off by tens of percent for other text).

The router never adds `stream_options` to a request: the extra event it makes the engine send
has no `choices`, which clients that did not ask for it may not expect.
"""

from __future__ import annotations

import re

import orjson

CHARS_PER_TOKEN = 4
USAGE = re.compile(rb'"usage"\s*:\s*\{')  # an answer's usage, not `"usage": null` (TGI's streamed events)


def says_usage(chunk: bytes) -> bool:
    """Whether a streamed chunk may carry the answer's usage (a cheap test first)."""
    return (b'"usage"' in chunk and USAGE.search(chunk) is not None) or b'"generated_tokens"' in chunk


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
    """A whole JSON answer's usage: the OpenAI routes' `usage` (read from where it starts, the
    end of the answer: no need to parse the text before it), or TGI's `details` (`POST /`
    answers a list: their sum)."""
    at = body.rfind(b'"usage"')
    if at >= 0 and USAGE.match(body, at):
        end = body.find(b"}", at)
        try:
            found = orjson.loads(b"{" + body[at:end + 1] + b"}")
        except orjson.JSONDecodeError:
            found = None  # (a usage with objects inside: the whole answer is read below)
        if isinstance(found, dict) and _read(found, call):
            return
    elif b'"generated_tokens"' not in body:
        return
    try:
        found = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if isinstance(found, dict):
        _read(found, call)
    elif isinstance(found, list):
        prompt = completion = 0
        for one in found:
            if isinstance(one, dict) and _read(one, call):
                prompt, completion = prompt + max(call.prompt_tokens, 0), completion + call.completion_tokens
        if completion:
            call.prompt_tokens, call.completion_tokens = (prompt or -1), completion


def streamed(call, tail: bytes, events: int, last: bytes) -> None:
    """A stream's usage: the last chunk that said it (`tail`), else its events counted (but
    `data: [DONE]`, in the `last` chunk)."""
    if tail:
        for line in reversed(tail.split(b"\n")):
            if line.startswith(b"data:") and (USAGE.search(line) or b'"generated_tokens"' in line):
                try:
                    found = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    break  # (an event split over two chunks: counted below)
                if isinstance(found, dict) and _read(found, call):
                    return
                break
    if events:
        call.completion_tokens = max(0, events - (b"[DONE]" in last))


def estimate(kind: str, body: dict, size: int) -> tuple[int, int]:
    """(the prompt's tokens, those the request may generate at most) before any engine says:
    its JSON body's bytes / 4 (the text, its quoting and the field names), and its
    `max_tokens` (`max_completion_tokens`, TGI's `parameters.max_new_tokens`) where it sets one."""
    if kind == "tgi":
        params = body.get("parameters")
        most = params.get("max_new_tokens") if isinstance(params, dict) else None
    else:
        most = body.get("max_tokens") or body.get("max_completion_tokens")
    return (size + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN, most if isinstance(most, int) else 0

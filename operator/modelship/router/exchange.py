"""One request on its way through the router: the `Exchange` the app makes once a request is
read and its target known, and the prompt text that prefix-cache balancing reads of it."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import orjson

from .engines import engine
from .validate import apply_defaults

if TYPE_CHECKING:
    from .registry import Target

OPENER_CHARS = 512  # a completion's opener (it has no messages to say where a conversation starts)


def prompt_text(kind: str, body: dict) -> tuple[str, int, int]:
    """The text a backend's prefix cache sees first (the conversation, or the prompt), where
    its conversation's opener ends in it and where its first user message starts.

    A chat's opener is everything up to and including its first user message: what every
    later turn of the conversation repeats, and what sets it apart from other conversations
    (two that share a system prompt differ there). A completion's is its first
    OPENER_CHARS characters."""
    if kind == "chat":
        parts, size, opener, user = [], 0, -1, -1
        for m in body.get("messages") or []:
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                content = "".join(t for p in content if isinstance(p, dict) and isinstance(t := p.get("text"), str))
            role = m.get("role", "")
            part = f"{role}\x00{content if isinstance(content, str) else ''}\x01"
            if opener < 0 and role == "user":
                user, opener = size + len(role) + 1, size + len(part)
            parts.append(part)
            size += len(part)
        return "".join(parts), (opener if opener >= 0 else size), (user if user >= 0 else size)
    prompt = body.get("prompt") if kind == "completion" else body.get("inputs")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt and isinstance(prompt[0], str) else ""
    text = prompt if isinstance(prompt, str) else ""
    return text, min(len(text), OPENER_CHARS), 0


class Call:
    """What is said of one request once it ends (the access log, the usage counters): made when
    it arrives, filled in on its way."""

    __slots__ = ("rid", "caller", "started", "model", "answered_by", "endpoint", "status", "ttfb", "prompt_tokens",
                 "completion_tokens", "headers", "admission", "allowed", "estimate", "reserved")

    def __init__(self, rid: bytes, caller: str, started: float) -> None:
        self.rid = rid  # x-request-id: the client's, or made here
        self.caller = caller  # the API key's name ("" without keys)
        self.started = started
        self.model = ""  # the model the request named (its target's name, once known)
        self.answered_by = ""  # the target that answered (a fallback's name after a fallback)
        self.endpoint = ""
        self.status = 0
        self.ttfb = -1.0  # seconds to the first byte of the engine's answer (-1: none came)
        self.prompt_tokens = self.completion_tokens = -1  # -1: not known
        self.headers: list[tuple[bytes, bytes]] = [(b"x-request-id", rid)]  # every answer's own headers
        self.admission = None  # the limits it was admitted under (quota.Admission), if any
        self.allowed = None  # allowed(target): whether the caller may call it (None: any target)
        self.estimate = 0  # the prompt's tokens, estimated before any engine says (usage.estimate)
        self.reserved = 0  # the tokens taken from the limits at admission: the estimate and max_tokens


    def used(self) -> int:
        """Its tokens, prompt and generated, as the engine said them (the prompt's estimated
        where it said none)."""
        return (self.prompt_tokens if self.prompt_tokens >= 0 else self.estimate) + max(self.completion_tokens, 0)


class Exchange:
    """One request on its way to an endpoint and back: what forwarding needs of it, set once.
    `named` is the target the request named, whose demand it counts in; `target` the one that
    answers it (the same, or a fallback). `kind` says where the prompt is in `body` ("chat",
    "completion", "tgi"; "info": none). `call` is what the access log and the usage counters
    read of it."""

    __slots__ = ("named", "target", "path", "raw", "body", "kind", "method", "receive", "send", "started", "task",
                 "key", "watcher", "demand", "opened", "call", "given")

    def __init__(self, named: Target, target: Target, path: str, raw: bytes, body: dict, kind: str, receive, send,
                 method: str = "POST", call: Call | None = None) -> None:
        # (One assignment each: a tuple of four would be built and unpacked, on every request.)
        self.started = time.monotonic() if call is None else call.started
        self.named = named
        self.target = target
        self.call = call if call is not None else Call(b"", "", self.started)
        self.path = path
        self.raw = raw
        self.given = raw  # the body as the client sent it (`raw`: as its target gets it, `shape`)
        self.body = body
        self.kind = kind
        self.method = method
        self.receive = receive
        self.send = send
        self.task = asyncio.current_task()
        self.watcher: asyncio.Task | None = None  # watching for the client leaving, once started
        self.demand = named.demand
        self.opened = False  # the answer's head is sent (a streamed request held while its model woke)
        strategy = target.strategy  # only a strategy that reads the prompt pays for rendering it
        self.key = strategy.key(*prompt_text(kind, body)) if strategy.reads_prompt and kind != "info" else None

    def shape(self, target: Target) -> None:
        """The body for `target`: with its generation defaults where the router applies them
        (TGI, which has none of its own, and SGLang's OpenAI routes: validate.apply_defaults;
        vLLM and llama.cpp are started with them, engines.py), and naming the model as the engine serves it where
        the engine must be asked so (engines.Engine.served_name: vLLM answers 404 for any other
        name, SGLang reads a ':' as a LoRA adapter's; a request by alias, task, namespace or for a
        fallback); as the client sent it, byte for byte, otherwise."""
        kind, changed = self.kind, False
        if kind == "info":
            self.raw = self.given
            return
        e, body = engine(target.engine), None
        if target.defaults and e.router_defaults:
            body = orjson.loads(self.given)
            changed = apply_defaults(kind, body, target.defaults, top_k=e.openai_top_k)
        served = target.served or target.name
        if e.served_name and kind != "tgi" and self.body.get("model") != served:
            body = body if body is not None else orjson.loads(self.given)
            body["model"], changed = served, True
        self.raw = orjson.dumps(body) if changed else self.given

    def retarget(self, target: Target) -> None:
        """Another target answers: a fallback, or the one discovery rebuilt (its strategy
        changed) while the request was held."""
        self.shape(target)
        self.target = target
        strategy = target.strategy
        self.key = (strategy.key(*prompt_text(self.kind, self.body)) if strategy.reads_prompt and self.kind != "info"
                    else None)

    def watch(self) -> None:
        """Start watching for the client leaving (the wheel calls this once the request has
        lasted WATCH_AFTER)."""
        self.watcher = asyncio.create_task(cancel_on_disconnect(self.receive, self.task))


async def cancel_on_disconnect(receive, task: asyncio.Task) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return

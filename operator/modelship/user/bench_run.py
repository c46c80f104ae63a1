"""What `modelship bench` measures, and how: requests sent at a level of concurrency, each timed
from its sending to its first token (TTFT) and to its last (latency), its tokens taken from the
engine's own usage when the stream gives it (OpenAI's last chunk with `include_usage`; TGI's
`details.generated_tokens`), else counted (one streamed chunk, one token; the prompt's tokens
as asked for). A level is bounded by its count of requests or its duration, and each request
by a timeout."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .sse import CHAT_PATH, RouterError, aevents, delta_text, error_from

WORDS = ("the quick brown fox jumps over a lazy dog while seven small birds sing in green trees "
         "near an old stone bridge").split()


def prompt_of(tokens: int, index: int = 0) -> str:
    """A prompt of about `tokens` tokens (short common words: about one token each), its first
    words its own (`index`), so that an engine's prefix cache does not answer for the prompt
    (llama.cpp's did, measured: a TTFT p50 of 19 ms for 72 prompt tokens on one CPU thread)."""
    words = [WORDS[(i + index) % len(WORDS)] for i in range(max(1, tokens - 10))]
    return f"Request {index}. Repeat these words and go on: " + " ".join(words)


@dataclass
class Sample:
    ok: bool
    ttft_s: float | None = None
    latency_s: float | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    error: str | None = None


@dataclass
class Plan:
    url: str
    model: str
    api: str  # "openai" or "tgi"
    prompt_tokens: int
    max_tokens: int
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 120.0
    seed: int | None = 0


async def openai_request(client: Any, plan: Plan, index: int) -> Sample:
    body = {"model": plan.model, "messages": [{"role": "user", "content": prompt_of(plan.prompt_tokens, index)}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": plan.max_tokens, "temperature": 0}
    if plan.seed is not None:
        body["seed"] = plan.seed
    start, first, chunks, usage = time.monotonic(), None, 0, None
    async with client.stream("POST", plan.url + CHAT_PATH, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise error_from(response.status_code, response.headers, response.content)
        async for event in aevents(response.aiter_lines()):
            usage = event.get("usage") or usage
            if delta_text(event):
                first = first or time.monotonic()
                chunks += 1
    end = time.monotonic()
    usage = usage or {}
    return Sample(True, ((first or end) - start), end - start, usage.get("prompt_tokens") or plan.prompt_tokens,
                  usage.get("completion_tokens") or chunks)


async def tgi_request(client: Any, plan: Plan, index: int) -> Sample:
    """TGI's native API, through the router's `/models/{name}/generate_stream` (the client POSTs to
    its base URL, which names the model: the router takes it from the path, as TGI's own routes)."""
    start, first, tokens, generated = time.monotonic(), None, 0, None
    prompt = prompt_of(plan.prompt_tokens, index)
    async for response in client.generate_stream(prompt, max_new_tokens=plan.max_tokens, seed=plan.seed):
        if not response.token.special:
            first = first or time.monotonic()
            tokens += 1
        if response.details is not None:
            generated = response.details.generated_tokens
    end = time.monotonic()
    return Sample(True, ((first or end) - start), end - start, plan.prompt_tokens, generated or tokens)


async def one(send: Callable, client: Any, plan: Plan, index: int) -> Sample:
    try:
        return await asyncio.wait_for(send(client, plan, index), plan.timeout_s)
    except RouterError as e:
        return Sample(False, error=e.line())
    except asyncio.TimeoutError:
        return Sample(False, error=f"timed out after {plan.timeout_s:g} s")
    except Exception as e:  # noqa: BLE001 - any failure of one request is counted, not fatal
        return Sample(False, error=f"{type(e).__name__}: {str(e)[:200]}")


def tgi_client(plan: Plan) -> Any:
    from text_generation import AsyncClient

    return AsyncClient(f"{plan.url}/models/{plan.model}/generate_stream", headers=plan.headers,
                       timeout=int(plan.timeout_s))


async def level(plan: Plan, concurrency: int, requests: int | None, duration_s: float | None,
                tick: Callable[[], None] = lambda: None) -> tuple[list[Sample], float]:
    """Requests at `concurrency` until `requests` were sent or `duration_s` passed; the samples
    and the level's wall time."""
    import httpx

    start = time.monotonic()
    deadline = start + duration_s if duration_s else None
    left, sent = [requests if requests is not None else 10**9], [0]
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=plan.headers, timeout=plan.timeout_s, limits=limits) as http:
        client, send = (http, openai_request) if plan.api == "openai" else (tgi_client(plan), tgi_request)

        async def worker() -> None:
            while left[0] > 0 and (deadline is None or time.monotonic() < deadline):
                left[0], sent[0], index = left[0] - 1, sent[0] + 1, sent[0]
                samples.append(await one(send, client, plan, index))
                tick()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.monotonic() - start


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p90, p99 (linear between the nearest ranks) and the mean, in milliseconds."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    ordered = sorted(v * 1000 for v in values)

    def at(q: float) -> float:
        pos = (len(ordered) - 1) * q
        low = int(pos)
        high = min(low + 1, len(ordered) - 1)
        return round(ordered[low] + (ordered[high] - ordered[low]) * (pos - low), 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "mean": round(sum(ordered) / len(ordered), 3)}


def summary(concurrency: int, samples: list[Sample], duration_s: float) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    prompt, generated = sum(s.prompt_tokens for s in ok), sum(s.generated_tokens for s in ok)
    errors = [s.error for s in samples if not s.ok]
    return {"concurrency": concurrency, "requests": len(samples), "errors": len(errors),
            "duration_s": round(duration_s, 3), "prompt_tokens": prompt, "generated_tokens": generated,
            "prompt_tokens_per_s": round(prompt / duration_s, 3) if duration_s > 0 else 0.0,
            "generated_tokens_per_s": round(generated / duration_s, 3) if duration_s > 0 else 0.0,
            "ttft_ms": percentiles([s.ttft_s for s in ok]), "latency_ms": percentiles([s.latency_s for s in ok]),
            "error_examples": sorted(set(errors))[:3]}


def averages(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the levels: the mean of each rate and of each mean time; errors summed."""

    def mean(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return round(sum(values) / len(values), 3) if values else None

    return {"prompt_tokens_per_s": mean([r["prompt_tokens_per_s"] for r in runs]),
            "generated_tokens_per_s": mean([r["generated_tokens_per_s"] for r in runs]),
            "ttft_ms": mean([r["ttft_ms"]["mean"] for r in runs]),
            "latency_ms": mean([r["latency_ms"]["mean"] for r in runs]),
            "requests": sum(r["requests"] for r in runs), "errors": sum(r["errors"] for r in runs)}

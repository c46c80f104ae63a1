"""Rate limits per caller (an API key's name) and per model (all callers together): requests
per minute, tokens per minute (prompt + generated) and concurrent requests. Pure state: every
call takes `now` (monotonic seconds), nothing here reads a clock or does I/O.

Token buckets with debt. A limit of L per minute is a bucket of capacity L that refills at L/60
per second and starts full, so a scope may burst L at once, then gets L a minute. A request
takes 1 from the requests bucket and is refused when less than 1 is left. Its tokens are not
known when it is admitted (the reply's length is the engine's), so a request is admitted while
the tokens bucket is above 0, takes an estimate then, and at its end (`Admission.done`) the
difference between the real count and the estimate is charged: the bucket may go negative, and
that debt refuses the scope's next requests until refill pays it back. Over any window a scope
gets at most capacity + refill, plus the last request's overshoot.

Several router replicas share the limits by exchanging counters: each scope keeps monotonic
totals of what this replica consumed (`requests_total`, `tokens_total`), `report()` lists them
with the local in-flight counts under a random `boot` id, and `merge()` charges the local buckets
with what a peer consumed since its previous report (its first report, or one from a new boot,
is a baseline only). Every bucket thus sees the whole cluster's consumption, the peers' late by
at most one poll interval T: a replica admits only while capacity + refill covers its own use
plus its peers' use up to T ago, so the cluster admits at most what one shared bucket would plus
what the other replicas admitted in the last T; and no less, but for the refill a bucket loses
while it sits full before it hears of the others (at most one interval's: a replica idle until
then). The debt that a late report brings is paid back by refusals, so the error does not add up
over time (tests/unit/test_router_quota.py simulates it).
Concurrency counts local in-flight plus the last figure each peer reported.

The requests count in a replica's totals when admitted (peers see them within T even for
long streams); tokens when the request ends, with their real count (estimates stay local).

A caller or model without a limit has no `Quota` object at all: `admit` is then two dict
lookups returning a shared no-op `Admission`.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from .errors import ErrorAnswer

MAX_FIGURE = 1e15  # a peer's figure beyond this is not one (it would drive a bucket to -inf)
MAX_RETRY = 3600.0  # seconds: the longest retry-after said (the openai client retries only up to 120)
CONCURRENCY_RETRY = 1.0  # seconds: a refusal for concurrency cannot know when a request ends


@dataclass(frozen=True)
class Limit:
    """A scope's limits; None: no limit of that kind."""

    rpm: int | None = None
    tpm: int | None = None
    concurrent: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "concurrent"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, not {value!r}")

    def __bool__(self) -> bool:
        return not (self.rpm is None and self.tpm is None and self.concurrent is None)


class Bucket:
    """A token bucket of `limit` a minute: capacity `limit`, refilled at limit/60 per second,
    full at first; it may go into debt (a negative level)."""

    __slots__ = ("limit", "rate", "_level", "_at")

    def __init__(self, limit: int, now: float = -math.inf):
        self.limit, self.rate = limit, limit / 60.0
        self._level, self._at = float(limit), now

    def level(self, now: float) -> float:
        if now > self._at:  # a clock read late (now < _at) sees the level as it is
            self._level = min(self.limit, self._level + (now - self._at) * self.rate)
            self._at = now
        return self._level

    def admit(self, now: float, cost: float = 1.0, known: bool = True) -> bool:
        """Take `cost` if the bucket allows it: a known cost (a request) needs level >= cost; an
        estimate (tokens, settled later with `charge`) needs level > 0 only."""
        level = self.level(now)
        if (level < cost) if known else (level <= 0):
            return False
        self._level = level - cost
        return True

    def charge(self, now: float, n: float) -> None:
        """Take `n` whatever the level (a negative `n` gives back)."""
        self._level = min(self.limit, self.level(now) - n)

    def retry_after(self, now: float, need: float = 1.0) -> float:
        """Seconds until the level is at least `need` (at most the capacity)."""
        return max(0.0, (min(need, self.limit) - self.level(now)) / self.rate)

    def reset(self, now: float) -> float:
        """Seconds until the bucket is full again."""
        return (self.limit - self.level(now)) / self.rate


class Quota:
    """One scope's state (a caller's or a model's): its limit, buckets, in-flight count (local,
    and the sum of the peers' last figures) and the totals this replica consumed."""

    __slots__ = ("limit", "requests", "tokens", "in_flight", "peers", "peers_in_flight",
                 "requests_total", "tokens_total")

    def __init__(self, limit: Limit):
        self.limit = limit
        self.requests = Bucket(limit.rpm) if limit.rpm is not None else None
        self.tokens = Bucket(limit.tpm) if limit.tpm is not None else None
        self.in_flight = self.peers_in_flight = 0
        self.peers: dict[str, int] = {}  # peer -> its last in-flight figure
        self.requests_total = self.tokens_total = 0

    def relimit(self, limit: Limit) -> None:
        """A new limit: the buckets whose limit changed start again, full; counts stay."""
        if limit.rpm != self.limit.rpm:
            self.requests = Bucket(limit.rpm) if limit.rpm is not None else None
        if limit.tpm != self.limit.tpm:
            self.tokens = Bucket(limit.tpm) if limit.tpm is not None else None
        self.limit = limit

    def set_peer(self, peer: str, in_flight: int) -> None:
        before = self.peers.pop(peer, 0)
        if in_flight:
            self.peers[peer] = in_flight
        self.peers_in_flight += in_flight - before

    def refusal(self, now: float, kind: str, name: str) -> ErrorAnswer | None:
        """Why this scope cannot take one more request now (None: it can): concurrency, then
        requests, then tokens."""
        concurrent, requests, tokens = self.limit.concurrent, self.requests, self.tokens
        if concurrent is not None and self.in_flight + self.peers_in_flight >= concurrent:
            return _refused(f"Too many concurrent requests for {kind} '{name}': limit {concurrent}.",
                            "requests", CONCURRENCY_RETRY, "concurrent")
        if requests is not None and requests.level(now) < 1.0:
            return _refused(_reached("requests", kind, name, requests, now), "requests", requests.retry_after(now))
        if tokens is not None and tokens.level(now) <= 0.0:
            return _refused(_reached("tokens", kind, name, tokens, now), "tokens", tokens.retry_after(now))
        return None

    def take(self, now: float, estimate: int) -> None:
        self.in_flight += 1
        self.requests_total += 1
        if self.requests is not None:
            self.requests.charge(now, 1.0)
        if self.tokens is not None and estimate:
            self.tokens.charge(now, estimate)

    def settle(self, now: float, tokens: int, estimate: int) -> None:
        self.in_flight -= 1
        self.tokens_total += tokens
        if self.tokens is not None and tokens != estimate:
            self.tokens.charge(now, tokens - estimate)


def _reached(what: str, kind: str, name: str, bucket: Bucket, now: float) -> str:
    retry = _ceil(min(bucket.retry_after(now), MAX_RETRY) * 10) / 10
    return (f"Rate limit reached for {what} per minute ({kind} '{name}'): limit {bucket.limit}, "
            f"remaining {max(0, math.floor(bucket.level(now)))}; try again in {retry:.1f} s.")


def _ceil(x: float) -> int:
    """Up to the next integer, but not for a float's last bits (0.2 * 1000 is 200, not 201)."""
    return math.ceil(round(x, 6))


def _refused(message: str, what: str, retry: float, limit: str = "") -> ErrorAnswer:
    """A 429; `limit` (the metrics' label): `what`, or "concurrent"."""
    retry = min(retry, MAX_RETRY)
    headers = [(b"retry-after", str(max(1, _ceil(retry))).encode()),
               (b"retry-after-ms", str(max(1, _ceil(retry * 1000))).encode())]
    e = ErrorAnswer(429, message, what, "rate_limit_exceeded", headers)
    e.limit = limit or what
    return e


def duration(seconds: float) -> str:
    """A duration as OpenAI writes its x-ratelimit-reset-* headers (Go's format, to the
    millisecond): "20ms", "1s", "17.28s", "1m30.5s", "6m0s", "1h0m0s"."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    text = f"{ms // 1000}.{ms % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def ratelimit_headers(caller: Quota | None, model: Quota | None, now: float) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers, for requests and for tokens each from the caller's bucket,
    or the model's if the caller has no limit of that kind; none for a kind neither limits."""
    out = []
    for what in ("requests", "tokens"):
        bucket = getattr(caller, what) if caller is not None else None
        if bucket is None and model is not None:
            bucket = getattr(model, what)
        if bucket is not None:
            out += [(b"x-ratelimit-limit-" + what.encode(), str(bucket.limit).encode()),
                    (b"x-ratelimit-remaining-" + what.encode(), str(max(0, math.floor(bucket.level(now)))).encode()),
                    (b"x-ratelimit-reset-" + what.encode(), duration(bucket.reset(now)).encode())]
    return out


class Admission:
    """A request let in: it holds the scopes it took from until `done` (idempotent, so that
    a `finally` may call it whatever happened before)."""

    __slots__ = ("caller", "model", "estimate", "at", "open")

    def __init__(self, caller: Quota | None, model: Quota | None, estimate: int, at: float, open: bool = True):
        self.caller, self.model, self.estimate, self.at, self.open = caller, model, estimate, at, open

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The x-ratelimit-* headers as of the admission (nothing for an unlimited request)."""
        if self.caller is None and self.model is None:
            return []
        return ratelimit_headers(self.caller, self.model, self.at)

    def done(self, now: float, tokens: int = 0, estimate_was: int | None = None,
             model_tokens: int | None = None) -> None:
        """The request ended having used `tokens` (prompt + generated; 0 when unknown or failed):
        the estimate taken at admission (`estimate_was`, by default the one given to `admit`)
        is settled against them."""
        if not self.open:
            return
        self.open = False
        estimate = self.estimate if estimate_was is None else estimate_was
        if self.caller is not None:
            self.caller.settle(now, tokens, estimate)
        if self.model is not None:  # (`model_tokens`: what the model used, when another one answered)
            self.model.settle(now, tokens if model_tokens is None else model_tokens, estimate)


UNLIMITED = Admission(None, None, 0, 0.0, open=False)  # shared: done() and headers() do nothing


class _Peer:
    __slots__ = ("boot", "seen", "holding")

    def __init__(self, boot: str):
        self.boot = boot
        self.seen: dict[tuple[str, str], tuple[float, float]] = {}  # (table, name) -> (requests, tokens)
        self.holding: set[Quota] = set()  # the quotas holding this peer's in-flight figure


class Quotas:
    """All scopes' state on one router replica, and the exchange with its peers."""

    def __init__(self, boot: str | None = None):
        self.boot = boot or secrets.token_hex(8)
        self.callers: dict[str, Quota] = {}
        self.models: dict[str, Quota] = {}
        self.default_caller: Limit | None = None
        self._unlimited: frozenset[str] = frozenset()  # callers named with no limit: not given the default
        self._peers: dict[str, _Peer] = {}

    def configure(self, callers: dict[str, Limit], models: dict[str, Limit], default_caller: Limit | None) -> None:
        """Set the limits (again, on a settings reload). A scope whose limit is unchanged keeps its
        state; one whose limit changed gets new buckets (full) but keeps its counts, so that the
        requests in flight settle against it; a scope left without a limit is dropped. A caller
        with no entry gets `default_caller`, in a Quota of its own made at its first request; one
        whose entry has no limit (`Limit()`) has none."""
        self.default_caller = default_caller or None
        self._unlimited = frozenset(name for name, limit in callers.items() if not limit)
        self.callers = self._reconfigured(self.callers, callers, self.default_caller)
        self.models = self._reconfigured(self.models, models, None)

    @staticmethod
    def _reconfigured(table: dict[str, Quota], wanted: dict[str, Limit], default: Limit | None) -> dict[str, Quota]:
        out = {}
        for name, quota in table.items():
            limit = wanted.get(name, default)
            if limit:
                quota.relimit(limit)
                out[name] = quota
        for name, limit in wanted.items():
            if limit and name not in out:
                out[name] = Quota(limit)
        return out

    def _caller(self, name: str) -> Quota | None:
        quota = self.callers.get(name)
        if quota is None and self.default_caller is not None and name not in self._unlimited:
            quota = self.callers[name] = Quota(self.default_caller)
        return quota

    def admit(self, caller: str, model: str, now: float, tokens_estimate: int = 0) -> Admission:
        """Let a request in, or raise ErrorAnswer(429) in OpenAI's shape: the caller's
        concurrency, requests and tokens are checked, then the model's."""
        c = self.callers.get(caller)
        if c is None and self.default_caller is not None:
            c = self._caller(caller)
        m = self.models.get(model)
        if c is None and m is None:
            return UNLIMITED
        refusal = c.refusal(now, "key", caller) if c is not None else None
        if refusal is None and m is not None:
            refusal = m.refusal(now, "model", model)
        if refusal is not None:
            refusal.headers += ratelimit_headers(c, m, now)
            raise refusal
        if c is not None:
            c.take(now, tokens_estimate)
        if m is not None:
            m.take(now, tokens_estimate)
        return Admission(c, m, tokens_estimate, now)

    def admit_model(self, model: str, now: float, tokens_estimate: int = 0) -> Admission:
        """A fallback model's own limits, for a request its caller's were checked for already."""
        m = self.models.get(model)
        if m is None:
            return UNLIMITED
        refusal = m.refusal(now, "model", model)
        if refusal is not None:
            refusal.headers += ratelimit_headers(None, m, now)
            raise refusal
        m.take(now, tokens_estimate)
        return Admission(None, m, tokens_estimate, now)

    def report(self) -> dict:
        """What the peers read (JSON-able): this replica's totals and in-flight counts."""
        return {"boot": self.boot,
                "callers": {n: [q.requests_total, q.tokens_total, q.in_flight] for n, q in self.callers.items()},
                "models": {n: [q.requests_total, q.tokens_total, q.in_flight] for n, q in self.models.items()}}

    def merge(self, peer: str, report: object, now: float) -> None:
        """Charge the local buckets with what `peer` consumed since its previous report, and take
        its in-flight counts. Its first report, or its first from a new boot, is a baseline only;
        a scope new in a report from a known boot counts whole (it started at 0 since). A report
        that is not of `report()`'s shape, or this replica's own, is ignored."""
        parsed = _parse(report)
        if parsed is None or parsed[0] == self.boot:
            return
        boot, scopes = parsed
        last = self._peers.get(peer)
        known = last is not None and last.boot == boot
        state = _Peer(boot)
        for table, name, requests, tokens, in_flight in scopes:
            state.seen[(table, name)] = (requests, tokens)
            quota = self._caller(name) if table == "callers" else self.models.get(name)
            if quota is None:
                continue
            if known:
                before = last.seen.get((table, name), (0, 0))
                _charge(quota, now, requests - before[0], tokens - before[1])
            quota.set_peer(peer, in_flight)
            state.holding.add(quota)
        for quota in (last.holding - state.holding) if last is not None else ():
            quota.set_peer(peer, 0)
        self._peers[peer] = state

    def quiet(self, peer: str) -> None:
        """A peer that did not answer this time: its in-flight counts no longer count, but what it
        consumed is still charged from its next report (its baseline is kept)."""
        last = self._peers.get(peer)
        for quota in last.holding if last is not None else ():
            quota.set_peer(peer, 0)
        if last is not None:
            last.holding = set()

    def forget(self, peer: str) -> None:
        """A peer gone: its in-flight counts no longer count (what it consumed stays charged)."""
        last = self._peers.pop(peer, None)
        for quota in last.holding if last is not None else ():
            quota.set_peer(peer, 0)


def _charge(quota: Quota, now: float, requests: float, tokens: float) -> None:
    if requests > 0 and quota.requests is not None:
        quota.requests.charge(now, requests)
    if tokens > 0 and quota.tokens is not None:
        quota.tokens.charge(now, tokens)


def _count(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < MAX_FIGURE


def _parse(report: object) -> tuple[str, list[tuple[str, str, float, float, int]]] | None:
    """A peer's report as (boot, [(table, name, requests, tokens, in_flight)]), or None if it is
    not one."""
    if not isinstance(report, dict) or not isinstance(report.get("boot"), str) or not report["boot"]:
        return None
    scopes = []
    for table in ("callers", "models"):
        entries = report.get(table, {})
        if not isinstance(entries, dict):
            return None
        for name, figures in entries.items():
            if not (isinstance(name, str) and isinstance(figures, (list, tuple)) and len(figures) == 3
                    and all(_count(f) for f in figures)):
                return None
            scopes.append((table, name, figures[0], figures[1], int(figures[2])))
    return report["boot"], scopes

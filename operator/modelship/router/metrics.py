"""The router's Prometheus metrics.

What the hot path counts per request (requests, time to first byte, duration, retries,
streamed chunks) are prometheus_client metrics, each child looked up once; what the
registry already knows (requests open per endpoint, prompt blocks routed and matched, each
model's held requests and its in-flight seconds) is read from it at scrape time, so a request
pays nothing more for it."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .registry import Registry

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("modelship_router_requests_total", "Requests, by model, endpoint and status code.",
                                ["model", "endpoint", "code"], registry=r)
        self.ttfb = Histogram("modelship_router_time_to_first_byte_seconds", "From the request to the first byte "
                              "of the answer.", ["model"], buckets=BUCKETS, registry=r)
        self.latency = Histogram("modelship_router_request_duration_seconds", "From the request to the end of the "
                                 "answer.", ["model"], buckets=BUCKETS, registry=r)
        self.retries = Counter("modelship_router_retries_total", "Requests sent again to another endpoint.",
                               ["model", "reason"], registry=r)
        self.chunks = Counter("modelship_router_streamed_chunks_total", "Chunks passed through in streamed "
                              "answers.", ["model"], registry=r)
        self.fallbacks = Counter("modelship_router_fallbacks_total", "Requests answered by a fallback model, by the "
                                 "model they named, the fallback and why (the named model's last failure, or "
                                 "no_ready_endpoint).", ["model", "fallback", "reason"], registry=r)
        # Usage by caller: plain counts, a dict update per request, turned into series at scrape.
        self.usage: dict[tuple[str, str, int], list[int]] = {}  # (caller, model, code) -> [requests, prompt, gen]
        r.register(UsageCollector(self.usage))
        self.limited = Counter("modelship_router_rate_limited_total", "Requests refused with 429 by a limit, by "
                               "caller, model and limit (requests, tokens, concurrent).",
                               ["caller", "model", "limit"], registry=r)
        self.log_dropped = Counter("modelship_router_access_log_dropped_lines", "Lines for stderr (the access log's "
                                   "and the router's own log) dropped: stderr took none for a while (8 MiB "
                                   "waiting) or was closed; the requests went on.", registry=r)
        if registry is not None:
            r.register(RegistryCollector(registry))
        self._children: dict[tuple, object] = {}

    def child(self, metric, *values: str):
        """`metric.labels(*values)`, looked up once: `labels()` takes a lock and builds its key
        on every call, which the hot path cannot afford."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def prune(self, live: set[tuple[str, str]]) -> None:
        """Drop the request counts of endpoints (model, url) that are gone."""
        for (metric, values), _ in list(self._children.items()):
            if metric is self.requests and values[1] and values[:2] not in live:
                metric.remove(*values)
                del self._children[(metric, values)]


class UsageCollector:
    """The usage counters by caller and model, from `Metrics.usage`."""

    def __init__(self, usage: dict) -> None:
        self.usage = usage

    def collect(self):
        requests = CounterMetricFamily("modelship_router_caller_requests", "Requests, by caller (API key name; "
                                       "empty without keys), model named and status code.",
                                       labels=["caller", "model", "code"])
        prompt = CounterMetricFamily("modelship_router_caller_prompt_tokens", "Prompt tokens, by caller and model "
                                     "(the engine's count; estimated where it gives none).", labels=["caller", "model"])
        generated = CounterMetricFamily("modelship_router_caller_generated_tokens", "Generated tokens, by caller and "
                                        "model (the engine's count; the events of a stream where it gives none).",
                                        labels=["caller", "model"])
        tokens: dict[tuple[str, str], list[int]] = {}
        for (caller, model, code), (n, p, g) in list(self.usage.items()):
            requests.add_metric([caller, model, str(code)], n)
            both = tokens.setdefault((caller, model), [0, 0])
            both[0] += p
            both[1] += g
        for (caller, model), (p, g) in tokens.items():
            prompt.add_metric([caller, model], p)
            generated.add_metric([caller, model], g)
        yield from (requests, prompt, generated)


class RegistryCollector:
    """Series read from the registry when /metrics is scraped."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self):
        in_flight = GaugeMetricFamily("modelship_router_in_flight_requests", "Requests open to each endpoint.",
                                      labels=["model", "endpoint"])
        blocks = CounterMetricFamily("modelship_router_prefix_blocks", "Prompt blocks routed with the "
                                     "prefix-cache strategy.", labels=["model"])
        hits = CounterMetricFamily("modelship_router_prefix_hit_blocks", "Prompt blocks sent to the endpoint "
                                   "that last served them (an estimate of prefix-cache hits).", labels=["model"])
        held = GaugeMetricFamily("modelship_router_held_requests", "Requests held for a model at zero replicas "
                                 "while it wakes.", labels=["model"])
        area = CounterMetricFamily("modelship_router_in_flight_seconds", "The integral over time of the requests "
                                   "open for a model, held ones included (its rate: the mean in flight).",
                                   labels=["model"])
        now = time.monotonic()
        for t in list(self.registry.targets.values()):
            held.add_metric([t.name], t.demand.held)
            area.add_metric([t.name], t.demand.area_at(now))
            for url, ep in list(t.endpoints.items()):
                in_flight.add_metric([t.name, url], ep.in_flight)
            if t.strategy.counts_hits:
                blocks.add_metric([t.name], t.strategy.blocks_seen)
                hits.add_metric([t.name], t.strategy.hits)
        yield from (in_flight, blocks, hits, held, area)

"""The operator's metrics, on a registry of their own (the router's are built the same way).

What the reconcile loop counts as it goes (reconciles, their duration, child writes,
resolutions) are prometheus_client metrics. How many ModelDeployments are in each phase is
read at scrape time from the phases the operator last wrote into their status, recorded at
the moment each status is written: the gauge and the API server never disagree for longer
than a status write takes.
"""

from __future__ import annotations

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter,
                               Gauge, Histogram, start_http_server)
from prometheus_client.core import GaugeMetricFamily

from .. import api


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # as the default registry has
            r.register(collector)
        self.reconciles = Counter("modelship_reconciles_total", "Reconciles of ModelDeployments, by result.",
                                  ["result"], registry=r)
        self.reconcile_seconds = Histogram("modelship_reconcile_duration_seconds", "Time one reconcile took.",
                                           buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.child_writes = Counter("modelship_child_writes_total", "Children created, updated or deleted.",
                                    ["kind", "verb"], registry=r)
        self.resolutions = Counter("modelship_resolutions_total", "Model resolutions, by result reason.",
                                   ["reason"], registry=r)
        self.leader = Gauge("modelship_operator_leader", "1 while this replica is the active one (it holds the "
                            "leader Lease, or leader election is off), 0 while it stands by.", registry=r)
        self.phases: dict[tuple[str, str], str] = {}  # (namespace, name) -> the phase last written
        r.register(_Phases(self.phases))

    def follow_window(self, window) -> None:
        """The download window's gauges, read when scraped."""
        Gauge("modelship_downloads_in_flight", "Download Jobs made and not finished (at most "
              "maxConcurrentDownloads, but right after a start).", registry=self.registry).set_function(
            lambda: window.in_flight)
        Gauge("modelship_downloads_queued", "ModelDeployments waiting in line for a download to start.",
              registry=self.registry).set_function(lambda: window.queued)

    def leading(self, yes: bool) -> None:
        self.leader.set(1 if yes else 0)

    def record_phase(self, key: tuple[str, str], phase: str | None) -> None:
        """The phase just written into a ModelDeployment's status (None: it is gone)."""
        if phase is None:
            self.phases.pop(key, None)
        else:
            self.phases[key] = phase

    def serve(self, port: int, host: str) -> None:
        """`/metrics` on a thread of its own."""
        start_http_server(port, addr=host, registry=self.registry)


class _Phases:
    """`modelship_modeldeployments{phase}`, counted when scraped."""

    def __init__(self, phases: dict[tuple[str, str], str]) -> None:
        self.phases = phases

    def collect(self):
        gauge = GaugeMetricFamily("modelship_modeldeployments", "ModelDeployments by phase.", labels=["phase"])
        counts = {p: 0 for p in api.PHASES}
        for phase in list(self.phases.values()):
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            gauge.add_metric([phase], n)
        yield gauge

"""The controller's writes: the status says `Resolving` only when a resolution takes a while (an
answer at once, the catalog or a warm Hub cache, costs no status write, nor the reconcile of its
echo); the Service is applied beside the claim and the Job, which keep their order."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelship.reconcile import controller as controller_mod
from modelship.reconcile.controller import Controller
from modelship.reconcile.metrics import ControllerMetrics
from modelship.reconcile.types import ResolveError
from modelship.settings import Settings

from .test_plan import make_md, safetensors


class Kube:
    def __init__(self):
        self.written: list[dict] = []

    def write_status(self, namespace: str, name: str, status: dict) -> None:
        self.written.append(status)


class Resolver:
    def __init__(self, delay: float, answer=None):
        self.delay, self.answer, self.calls = delay, answer or safetensors(), 0

    def resolve(self, *_):
        self.calls += 1
        time.sleep(self.delay)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def run(resolver: Resolver, md=None):
    kube = Kube()
    controller = Controller(Settings(), kube, resolver, ControllerMetrics())
    md = md or make_md({"model": {"repo": "org/tiny"}})
    return asyncio.run(controller._resolve_saying(("ns", md.name), md)), kube.written


@pytest.fixture(autouse=True)
def short_grace(monkeypatch):
    monkeypatch.setattr(controller_mod, "RESOLVING_GRACE", 0.2)


def test_an_answer_at_once_writes_no_resolving_status():
    resolved, written = run(Resolver(0.0))
    assert resolved.sha == safetensors().sha
    assert written == []


def test_a_slow_answer_is_announced_first():
    resolved, written = run(Resolver(0.6))
    assert resolved.sha == safetensors().sha
    assert [s["phase"] for s in written] == ["Resolving"]
    resolved_condition = next(c for c in written[0]["conditions"] if c["type"] == "Resolved")
    assert resolved_condition["status"] == "Unknown"


def test_a_slow_failure_is_announced_once_per_generation():
    failure = ResolveError("HubUnreachable", "cannot reach the Hub", transient=True)
    resolution, written = run(Resolver(0.6, failure))
    assert isinstance(resolution, ResolveError) and [s["phase"] for s in written] == ["Resolving"]
    # the status after that failure names it for this generation: the retry says nothing first
    tried = make_md({"model": {"repo": "org/tiny"}}, status={"conditions": [
        {"type": "Resolved", "status": "False", "reason": "HubUnreachable", "observedGeneration": 1,
         "lastTransitionTime": "2026-12-01T00:00:00Z", "message": "cannot reach the Hub"}]})
    resolution, written = run(Resolver(0.6, failure), tried)
    assert isinstance(resolution, ResolveError) and written == []


# --- the plan's writes: the Service beside the rest ------------------------------------------


class SlowServiceKube(Kube):
    """The Service's apply takes a while (the API server allocating its ClusterIP under load)."""

    def __init__(self, refuse_service: bool = False):
        super().__init__()
        self.log: list[tuple[str, str]] = []
        self.refuse_service = refuse_service
        self.later: list = []

    def execute(self, action, namespace):
        from kubernetes.client.rest import ApiException

        self.log.append(("start", action.kind))
        if action.kind == "Service":
            time.sleep(0.3)
            if self.refuse_service:
                raise ApiException(status=422, reason="Invalid")
        self.log.append(("end", action.kind))
        return action.kind == "Job"  # (whether the watch cache's copy changed)

    def post_event_later(self, md, event):
        self.later.append(event)


def execute(kube: SlowServiceKube):
    from modelship.reconcile.types import Action, Plan

    md = make_md({"model": {"repo": "org/tiny"}})
    p = Plan([Action("apply", "Service", "m", {}), Action("apply", "PersistentVolumeClaim", "m-weights", {}),
              Action("apply", "Job", "m-download", {})], {"conditions": [], "phase": "Downloading"})
    controller = Controller(Settings(), kube, Resolver(0), ControllerMetrics())
    (done, changed), p = asyncio.run(controller._execute(md, p)), p
    assert changed  # (the Job's write changed the cache's copy, in both tests)
    return done, p


def test_a_download_does_not_wait_for_the_service():
    kube = SlowServiceKube()
    done, _ = execute(kube)
    # the claim and the Job were written while the Service's apply was still going, in order
    assert kube.log.index(("end", "Job")) < kube.log.index(("end", "Service"))
    assert kube.log.index(("end", "PersistentVolumeClaim")) < kube.log.index(("start", "Job"))
    assert sorted(e.message for e in done) == ["Created Job m-download", "Created PersistentVolumeClaim m-weights",
                                                "Created Service m"]


def test_a_refused_service_stops_only_its_own_lane_and_is_said():
    kube = SlowServiceKube(refuse_service=True)
    done, p = execute(kube)
    assert [e.message for e in done] == ["Created PersistentVolumeClaim m-weights", "Created Job m-download"]
    assert p.status["phase"] == "Failed"
    ready = next(c for c in p.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ApplyRejected" and ready["message"].startswith("Service m was refused by the API server")


# --- once more after a write, since its echo is no news -------------------------------------

@pytest.mark.parametrize("changed,wrote,again", [(True, False, True), (False, True, True), (False, False, False)])
def test_a_reconcile_that_changed_something_runs_once_more(monkeypatch, changed, wrote, again):
    """The watch events of the operator's own writes start no reconcile (cache.WatchCache.event),
    so the reconcile that wrote runs once more by itself, to see what it wrote; one that changed
    nothing (nothing to do, or writes that kept every object's version) does not (no loop)."""
    from modelship.reconcile.types import Plan

    controller = Controller(Settings(), Kube(), Resolver(0), ControllerMetrics())
    added = []
    monkeypatch.setattr(controller.queue, "add", lambda key, after=None: added.append(key))

    async def observe(md):
        return None

    async def execute(md, p):
        return [], changed

    async def report(key, md, old, p, done):
        return wrote

    monkeypatch.setattr(controller, "_observe", observe)
    monkeypatch.setattr(controller, "_scale", lambda *a: None)
    monkeypatch.setattr(controller, "_execute", execute)
    monkeypatch.setattr(controller, "_report", report)
    monkeypatch.setattr(controller_mod, "plan", lambda *a: Plan([], {"phase": "Ready"}))
    md = make_md({"model": {"repo": "org/tiny"}})
    asyncio.run(controller._reconcile(("ns", md.name), md, {}, safetensors()))
    assert added == ([("ns", md.name)] if again else [])

"""The controller's writes: the status says `Resolving` only when a resolution takes a while (an
answer at once, the catalog or a warm Hub cache, costs no status write, nor the reconcile of its
echo); the Service is applied beside the claim and the Job, which keep their order."""

from __future__ import annotations

import asyncio
import time

import pytest
from kubernetes import client

from modelship.reconcile import background
from modelship.reconcile import controller as controller_mod
from modelship.reconcile.controller import Controller
from modelship.reconcile.in_flight import InFlight
from modelship.reconcile.metrics import ControllerMetrics
from modelship.reconcile.types import ResolveError
from modelship.settings import Settings

from .test_plan import make_md, safetensors


class Kube:
    def __init__(self):
        self.written: list[dict] = []
        self.in_flight = InFlight(client.ApiClient(), 1)  # (the real gate: `ungated` marks the thread)

    def write_status(self, namespace: str, name: str, status: dict) -> None:
        self.written.append(status)

    def get_md(self, namespace: str, name: str, ask: bool = True):
        """The watch cache's copy after the status write: its answer (`cached`, as set)."""
        return getattr(self, "cached", None)


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
    return asyncio.run(controller._resolve_saying((md.namespace, md.name), md)), kube.written


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


# --- the plan's writes: the Service in the background ---------------------------------------


class SlowServiceKube(Kube):
    """The Service's apply takes a while (the API server allocating its ClusterIP under load)."""

    def __init__(self, service_fails: int | None = None):
        super().__init__()
        self.log: list[tuple[str, str]] = []
        self.service_fails = service_fails  # the status of the ApiException its apply raises
        self.later: list = []

    def execute(self, action, namespace):
        from kubernetes.client.rest import ApiException

        self.log.append(("start", action.kind))
        if getattr(self.in_flight.free, "on", False):
            self.log.append(("ungated", action.kind))
        if action.kind == "Service":
            time.sleep(0.3)
            if self.service_fails:
                raise ApiException(status=self.service_fails, reason="Invalid")
        self.log.append(("end", action.kind))
        return action.kind in ("Job", "Service")  # (whether the watch cache's copy changed)

    def post_event_later(self, md, event):
        self.later.append(event)


def actions(requeue_after=None):
    from modelship.reconcile.types import Action, Plan

    return Plan([Action("apply", "Service", "m", {"spec": {"ports": [{"port": 80}]}}),
                 Action("apply", "PersistentVolumeClaim", "m-weights", {}),
                 Action("apply", "Job", "m-download", {})], {"conditions": [], "phase": "Downloading"},
                requeue_after=requeue_after)


async def settled(controller: Controller) -> None:
    """Until no Service's apply is going on (30 s at most: a loaded machine)."""
    for _ in range(600):
        if not controller.services.running:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("a Service's apply did not end")


def reconciles(kube: SlowServiceKube, plans: list, between=None, controller=None):
    """`_execute` of each plan, one after the other, each left to let its background apply end
    (`between(controller)` then); what each returned, the keys the controller queued (and
    after how long), and the ModelDeployment."""
    controller = controller or Controller(Settings(), kube, Resolver(0), ControllerMetrics())
    queued: list = []
    md = make_md({"model": {"repo": "org/tiny"}})

    async def go():
        controller.queue.add = lambda key, after=None: queued.append((key, after))
        out = []
        for p in plans:
            out.append(await controller._execute(md, p))
            await settled(controller)
            if between:
                between(controller)
        await controller.close()
        return out

    return asyncio.run(go()), queued, md


def test_a_download_does_not_wait_for_the_service():
    kube = SlowServiceKube()
    [(done, changed)], queued, md = reconciles(kube, [actions()])
    # the reconcile ended with the claim and the Job written, in order, the Service's apply going on
    assert [e.message for e in done] == ["Created PersistentVolumeClaim m-weights", "Created Job m-download"]
    assert changed
    assert kube.log.index(("end", "Job")) < kube.log.index(("end", "Service"))
    # the Service's apply goes outside the limit of requests in flight (in_flight.py), the others do not
    assert [kind for what, kind in kube.log if what == "ungated"] == ["Service"]
    # the Service's end is announced and reconciled (its watch event is no news)
    assert [e.message for e in kube.later] == ["Created Service m"]
    assert queued == [((md.namespace, md.name), None)]


def test_one_apply_of_the_service_at_a_time():
    kube = SlowServiceKube()

    async def twice():
        controller = Controller(Settings(), kube, Resolver(0), ControllerMetrics())
        controller.queue.add = lambda key, after=None: None
        md = make_md({"model": {"repo": "org/tiny"}})
        await controller._execute(md, actions())
        await controller._execute(md, actions())  # while the first is going on
        await settled(controller)
        await controller.close()

    asyncio.run(twice())
    assert kube.log.count(("start", "Service")) == 1


def test_a_few_services_are_applied_at_once():
    """The API server allocates ClusterIPs one at a time: more applies at once would only hold
    threads that the reconciles need."""
    import threading

    from modelship.reconcile.types import Action, Plan

    class Counting(SlowServiceKube):
        def __init__(self):
            super().__init__()
            self.now, self.most, self.lock = 0, 0, threading.Lock()

        def execute(self, action, namespace):
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            try:
                return super().execute(action, namespace)
            finally:
                with self.lock:
                    self.now -= 1

    kube = Counting()

    async def many():
        controller = Controller(Settings(), kube, Resolver(0), ControllerMetrics())
        controller.queue.add = lambda key, after=None: None
        for i in range(10):
            md = make_md({"model": {"repo": "org/tiny"}})
            md.metadata["name"] = f"m{i}"
            await controller._execute(md, Plan([Action("apply", "Service", f"m{i}", {})], {"conditions": []}))
        await settled(controller)
        await controller.close()

    asyncio.run(many())
    assert kube.log.count(("end", "Service")) == 10 and kube.most == background.SERVICE_APPLIES


def test_a_refused_service_is_said_and_not_tried_at_every_reconcile():
    kube = SlowServiceKube(service_fails=422)
    plans = [actions(), actions(requeue_after=3.0), actions()]
    results, queued, md = reconciles(kube, plans)
    # the first reconcile wrote the claim and the Job; the refusal came after it: queued to be
    # said at once, and to be tried again a minute later
    assert [e.message for e in results[0][0]] == ["Created PersistentVolumeClaim m-weights", "Created Job m-download"]
    assert plans[0].status["phase"] == "Downloading"
    key = (md.namespace, md.name)
    assert queued[:2] == [(key, None), (key, background.REFUSED_RETRY)]
    for p in plans[1:]:  # said by the next ones, which do not try again
        ready = next(c for c in p.status["conditions"] if c["type"] == "Ready")
        assert p.status["phase"] == "Failed" and ready["reason"] == "ApplyRejected"
        assert ready["message"].startswith("Service m was refused by the API server: 422 Invalid; fix")
    assert plans[1].requeue_after == 3.0  # the download's progress is still followed
    assert kube.log.count(("start", "Service")) == 1


def test_a_refusal_is_said_while_it_is_tried_again():
    """No flapping: the reconciles during a retry say the refusal too."""
    kube = SlowServiceKube(service_fails=422)
    controller = Controller(Settings(), kube, Resolver(0), ControllerMetrics())
    md = make_md({"model": {"repo": "org/tiny"}})
    plans = [actions(), actions(), actions()]

    async def go():
        controller.queue.add = lambda key, after=None: None
        await controller._execute(md, plans[0])
        await settled(controller)
        for refused in controller.services.refused.values():
            refused.at -= background.REFUSED_RETRY
        await controller._execute(md, plans[1])  # tries again...
        await controller._execute(md, plans[2])  # ...and this one runs while it does
        await settled(controller)
        await controller.close()

    asyncio.run(go())
    assert kube.log.count(("start", "Service")) == 2
    assert [p.status["phase"] for p in plans] == ["Downloading", "Failed", "Failed"]


def test_a_refused_service_is_tried_again_with_another_body_or_later_and_forgotten_once_applied():
    kube = SlowServiceKube(service_fails=422)
    changed_body = actions()
    changed_body.actions[0].body["spec"]["ports"][0]["port"] = 8080

    def a_minute_later(controller):
        for refused in controller.services.refused.values():
            refused.at -= background.REFUSED_RETRY

    reconciles(kube, [actions(), changed_body])
    assert kube.log.count(("start", "Service")) == 2  # another body: tried at once
    kube.log.clear()
    controller = Controller(Settings(), kube, Resolver(0), ControllerMetrics())

    def fixed_a_minute_later(controller):
        a_minute_later(controller)
        kube.service_fails = None  # (the quota was raised, say)

    plans = [actions(), actions()]
    reconciles(kube, plans, between=fixed_a_minute_later, controller=controller)
    assert kube.log.count(("start", "Service")) == 2 and kube.later[-1].message == "Created Service m"
    assert [p.status["phase"] for p in plans] == ["Downloading", "Failed"]  # (said while tried again)
    assert controller.services.refused == {}  # applied at last: no longer said
    controller.services.closing = False
    after = actions()
    reconciles(kube, [after], controller=controller)
    assert after.status["phase"] == "Downloading"


def test_a_service_that_failed_on_the_way_is_tried_again_with_back_off():
    kube = SlowServiceKube(service_fails=503)
    plans = [actions(), actions()]
    _, queued, md = reconciles(kube, plans)
    key = (md.namespace, md.name)
    assert queued == [(key, background.TRANSIENT_RETRY), (key, 2 * background.TRANSIENT_RETRY)]
    assert [p.status["phase"] for p in plans] == ["Downloading", "Downloading"] and kube.later == []


def test_a_gone_modeldeployment_is_forgotten():
    kube = SlowServiceKube(service_fails=422)
    controller = Controller(Settings(), kube, Resolver(0), ControllerMetrics())
    reconciles(kube, [actions()], controller=controller)
    controller.following.add(("ns1", "tiny"))
    assert controller.services.refused
    controller.forget(("ns1", "tiny"))
    assert controller.services.refused == {} and controller.following == set()


# --- once more after a write, since its echo is no news -------------------------------------


def stub_steps(monkeypatch, controller: Controller, changed: bool = False, wrote: bool = False) -> None:
    """A reconcile's steps around its plan, stubbed: it observes nothing, scales nothing,
    executes and reports as told (`changed`, `wrote`)."""
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


def test_a_service_wanted_while_another_apply_goes_on_is_applied_after_it_even_if_that_changed_nothing():
    class Unchanged(SlowServiceKube):
        def execute(self, action, namespace):
            super().execute(action, namespace)
            return False  # (the Service was already as this body says)

    from modelship.reconcile.types import Action, Plan

    def service(port: int) -> Plan:
        return Plan([Action("apply", "Service", "m", {"spec": {"ports": [{"port": port}]}})], {"conditions": []})

    for newer, again in ((8080, True), (80, False)):
        kube = Unchanged()
        controller = Controller(Settings(), kube, Resolver(0), ControllerMetrics())
        queued = []

        async def go():
            controller.queue.add = lambda key, after=None: queued.append(key)
            md = make_md({"model": {"repo": "org/tiny"}})
            await controller._execute(md, service(80))
            await controller._execute(md, service(newer))  # while the first apply goes on: not started
            await settled(controller)
            await controller.close()

        asyncio.run(go())
        assert kube.log.count(("start", "Service")) == 1
        assert bool(queued) == again, (newer, queued)


@pytest.mark.parametrize("changed,wrote,child_action,answer_generation,again", [
    (True, False, False, 1, True),  # a child written: see it
    (False, True, True, 1, True),  # the status written beside a child action (which changed nothing)
    (False, True, False, 2, True),  # the status's answer shows a newer spec: a change came in with it
    (False, True, False, None, True),  # the status's answer is not in the watch cache: cannot tell
    (False, True, False, 1, False),  # the status alone, as planned: planning again gives it again
    (False, False, False, 1, False),  # nothing changed (nothing to do, or writes that kept every version)
    (False, True, False, "shared", True),  # on the shared cache, a new status.resolved: its neighbours read anew
])
def test_a_reconcile_that_changed_something_runs_once_more(monkeypatch, changed, wrote, child_action,
                                                           answer_generation, again):
    """The watch events of the operator's own writes start no reconcile (cache.WatchCache.event),
    so a reconcile that wrote runs once more by itself, to see what it wrote; one that changed
    nothing does not (no loop), nor one that wrote only the status its plan made with nothing
    else to do (test_plan.py: `settled_plan`), unless that write's answer brought a newer spec."""
    from modelship.reconcile.types import Action, Plan

    kube = Kube()
    controller = Controller(Settings(), kube, Resolver(0), ControllerMetrics())
    added = []
    monkeypatch.setattr(controller.queue, "add", lambda key, after=None: added.append(key))
    stub_steps(monkeypatch, controller, changed, wrote)
    steps = [Action("apply", "Service", "tiny", {})] + ([Action("apply", "Job", "tiny-fetch", {})] if child_action else [])
    monkeypatch.setattr(controller_mod, "plan", lambda *a: Plan(steps, {"phase": "Ready"}))
    shared = answer_generation == "shared"
    md = make_md({"model": {"repo": "org/tiny"}, **({"storage": {"sharedCache": True}} if shared else {})})
    md.metadata["uid"] = "u1"
    if shared:
        answer_generation = 1
        monkeypatch.setattr(controller_mod, "plan", lambda *a: Plan(steps, {"phase": "Queued",
                                                                            "resolved": safetensors().wire()}))
    if answer_generation is not None:
        kube.cached = {"metadata": {"name": md.name, "uid": "u1", "generation": answer_generation}}
    asyncio.run(controller._reconcile((md.namespace, md.name), md, {}, safetensors()))
    assert added == ([(md.namespace, md.name)] if again else [])


def test_the_progress_of_hundreds_of_downloads_is_read_less_often(monkeypatch):
    """Each running download's log is read every 3 s (the plan's pace) while few run; all of
    them together at most FOLLOW_READS a second when hundreds do."""
    from modelship.reconcile.types import Plan

    controller = Controller(Settings(), Kube(), Resolver(0), ControllerMetrics())
    stub_steps(monkeypatch, controller)  # (its `_observe` is set for each call below)
    monkeypatch.setattr(controller_mod, "plan", lambda *a: Plan([], {"phase": "Downloading"}, requeue_after=3.0))
    md = make_md({"model": {"repo": "org/tiny"}})
    key = (md.namespace, md.name)

    def requeue(others: int) -> float:
        async def observe(md):
            controller.following = {("ns", f"other-{i}") for i in range(others)} | {key}

        monkeypatch.setattr(controller, "_observe", observe)
        return asyncio.run(controller._reconcile(key, md, {}, safetensors()))

    assert requeue(0) == 3.0 and requeue(9) == 3.0
    assert requeue(499) == 500 / controller_mod.FOLLOW_READS  # 25 s: 20 reads a second in all


# --- the download window's place, as the controller keeps it ----------------------------------


class RefusingJobKube(SlowServiceKube):
    """The Job's apply is refused for good (a quota on Jobs: 403)."""

    def execute(self, action, namespace):
        from kubernetes.client.rest import ApiException

        if action.kind == "Job":
            raise ApiException(status=403, reason="Forbidden: exceeded quota: count/jobs.batch")
        return super().execute(action, namespace)


def test_a_download_job_refused_for_good_frees_its_place_in_the_window():
    """A ModelDeployment whose Job the API server refuses holds no place: the others' turn comes."""
    kube = RefusingJobKube()
    controller = Controller(Settings(max_concurrent_downloads=1), kube, Resolver(0), ControllerMetrics())
    woken: list = []
    controller.window.wake = lambda ns, name: woken.append(name)

    async def go():
        p = actions()
        md = make_md({"model": {"repo": "org/tiny"}})
        key = (md.namespace, md.name)
        assert controller.window.take(key, "m-download")
        p.download_job = "m-download"  # (what plan() says when it takes the place)
        assert not controller.window.take(("ns1", "other"), "other-download")  # in line behind it
        await controller._execute(md, p)
        controller.window.settle(key, p.download_job)  # as `_reconcile` does after `_execute`
        await settled(controller)
        await controller.close()
        return p

    p = asyncio.run(go())
    assert p.download_job is None and p.status["phase"] == "Failed"
    assert controller.window.in_flight == 0 and woken == ["other"]


def test_a_reconcile_that_fails_passes_a_place_kept_for_it_on():
    controller = Controller(Settings(max_concurrent_downloads=1), Kube(), Resolver(0), ControllerMetrics())
    woken: list = []
    controller.window.wake = lambda ns, name: woken.append(name)
    w = controller.window
    w.take(("ns1", "a"), "ja")
    w.take(("ns1", "b"), "jb")
    w.take(("ns1", "c"), "jc")
    w.settle(("ns1", "a"), None)  # a's Job ended: b's turn
    assert woken == ["b"]

    async def boom(*_):
        raise RuntimeError("the API server went away")

    controller.reconcile = boom
    with pytest.raises(RuntimeError):
        asyncio.run(controller._handle(("ns1", "b")))
    assert woken == ["b", "c"]  # b's place went on to c


def test_the_hub_is_asked_again_when_the_check_is_due_not_an_interval_after_each_reconcile():
    """A reconcile supersedes the last one's requeue (workqueue.py), so a Follow model's says
    when its check is due: reconciled often, it is still asked at its interval."""
    from datetime import datetime, timedelta, timezone

    settings = Settings(follow_interval_seconds=300)
    controller = Controller(settings, Kube(), Resolver(0), ControllerMetrics())
    key = ("ns1", "tiny")
    ago = (datetime.now(timezone.utc) - timedelta(seconds=100)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert controller._follow_wait(key, safetensors().model_copy(update={"resolved_at": ago})) == \
        pytest.approx(200, abs=5)
    long_ago = (datetime.now(timezone.utc) - timedelta(seconds=900)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert controller._follow_wait(key, safetensors().model_copy(update={"resolved_at": long_ago})) == 1.0
    assert controller._follow_wait(key, safetensors()) == 300  # never asked: a whole interval
    controller.follow_failures[key] = "HubUnreachable: down"
    assert controller._follow_wait(key, safetensors().model_copy(update={"resolved_at": ago})) == 30.0

"""The autoscaler, with a clock of the test's own: decisions (up at once, down after the delay
and never right after a restart, to zero when idle, from zero on the first request), the
routers' counters read into signals, rotation in a full pool, and what the plan does with it."""

from __future__ import annotations

import pytest

from modelship import api
from modelship.reconcile.autoscale import Signal, State, adjust, decide, insufficient
from modelship.reconcile.autoscaler import Autoscaler


def spec(**over) -> api.ModelDeploymentSpec:
    body = {"model": {"repo": "org/m"}, "replicas": 1, "maxReplicas": 4, "minReplicas": 0,
            "autoscaling": {"windowSeconds": 10, "scaleDownDelaySeconds": 30, "idleSeconds": 60,
                            "minResidencySeconds": 20}}
    for k, v in over.items():
        if k == "autoscaling":
            body["autoscaling"].update(v)
        else:
            body[k] = v
    return api.ModelDeploymentSpec.model_validate(body)


def md(name: str, ns: str = "ns", status: dict | None = None, **over) -> api.ModelDeployment:
    return api.ModelDeployment.model_validate({"metadata": {"name": name, "namespace": ns, "uid": f"u-{name}",
                                                            "generation": 1},
                                               "spec": spec(**over).wire(), "status": status or {}})


def sig(in_flight=0.0, engine=None, open_now=0, held=0, arrivals=0, idle=0.0, watched=1000.0) -> Signal:
    return Signal(in_flight, engine, open_now, held, arrivals, idle, watched)


# --- decide -------------------------------------------------------------------------------------


def test_load_over_the_target_scales_up_at_once_within_the_bounds():
    s, st = spec(), State(1, 1)
    d = decide(s, st, sig(in_flight=9.5, open_now=9), 100.0)
    assert d.replicas == 3 and d.reason == "ScaledUp" and d.metric == "InFlight" and d.target == 4
    assert "9.50" in d.message and "1 → 3" in d.message
    assert decide(s, st, sig(in_flight=100, open_now=100), 100.0).replicas == 4  # maxReplicas


def test_the_metric_that_asks_most_wins():
    s = spec(autoscaling={"metrics": [{"type": "InFlight", "targetPerReplica": 4},
                                      {"type": "EngineQueue", "targetPerReplica": 2}]})
    d = decide(s, State(1, 1), sig(in_flight=3, engine=5.5, open_now=3), 0.0)
    assert (d.replicas, d.metric, d.value) == (3, "EngineQueue", 5.5)
    # an engine nobody scraped is no signal (not zero)
    assert decide(s, State(1, 1), sig(in_flight=3, engine=None, open_now=3), 0.0) is None


def test_scale_down_waits_for_the_delay_and_takes_the_most_asked_for_in_it():
    s, st = spec(), State(3, 1, last_scale=0.0)
    assert decide(s, st, sig(in_flight=1, open_now=1), 10.0) is None  # 10 s after the last change: too soon
    assert decide(s, st, sig(in_flight=6, open_now=6), 20.0) is None  # asks for 2 at 20 s
    d = decide(s, st, sig(in_flight=1, open_now=1), 45.0)
    assert d.replicas == 2 and d.reason == "ScaledDown"  # the 2 of 20 s is within the last 30 s
    assert decide(s, st, sig(in_flight=1, open_now=1), 55.0).replicas == 1  # it has left the window


def test_no_scale_down_before_the_operator_has_watched_for_the_delay():
    """A restarted operator has no history: it must not read an empty window as no load."""
    s, st = spec(), State(3, 1)
    assert decide(s, st, sig(in_flight=0, open_now=0, idle=500, watched=29), 100.0) is None
    assert decide(s, st, sig(in_flight=0, open_now=0, idle=500, watched=31), 100.0).replicas == 0


def test_idle_for_idle_seconds_scales_to_zero_and_a_request_wakes_it():
    s, st = spec(), State(1, 1)
    assert decide(s, st, sig(idle=59), 0.0) is None  # stays at one while recently used
    unheard = Signal(0.0, None, 0, 0, 0, 61.0, 1000.0, complete=False)
    assert decide(s, st, unheard, 0.0) is None  # a router replica unheard: its requests could be open
    assert decide(s, st, sig(idle=61, open_now=1), 0.0) is None  # a request open now
    d = decide(s, st, sig(idle=61), 0.0)
    assert d.replicas == 0 and d.reason == "ScaledToZero" and "next request wakes it" in d.message
    zero = State(0, 1, last_scale=0.0)
    assert decide(s, zero, sig(idle=100), 100.0) is None  # no request: stays asleep
    d = decide(s, zero, sig(held=9, open_now=9, in_flight=9), 100.0)
    assert d.replicas == 3 and d.reason == "Woken" and "9 request(s) held" in d.message  # up to the demand
    assert decide(s, zero, sig(arrivals=1), 100.0).replicas == 1  # one a fallback answered
    # after a restart (arrivals unknown), a request the routers saw since it went to zero
    assert decide(s, zero, sig(arrivals=-1, idle=5), 100.0).replicas == 1
    assert decide(s, zero, sig(arrivals=-1, idle=500), 100.0) is None


def test_min_replicas_one_never_sleeps_and_kubectl_scale_jumps_then_goes_on():
    s = spec(minReplicas=1)
    assert decide(s, State(1, 1), sig(idle=10_000), 0.0) is None
    st = State(2, 1)
    d = adjust(spec(minReplicas=1, replicas=4), st)
    assert (d.replicas, d.reason) == (4, "ScaledBySpec")
    # new bounds apply at once, with or without a signal
    assert adjust(spec(maxReplicas=2), State(4, 1)).replicas == 2
    assert adjust(spec(minReplicas=3, replicas=3), State(1, 3)).replicas == 3
    assert adjust(spec(), State(2, 1)) is None


def test_no_value_for_any_signal_changes_nothing():
    s = spec(minReplicas=1, autoscaling={"metrics": [{"type": "EngineQueue", "targetPerReplica": 2}]})
    assert decide(s, State(3, 1), sig(engine=None, idle=10_000), 10_000.0) is None


def test_insufficient_reads_the_schedulers_words():
    m = "0/5 nodes are available: 1 Insufficient nvidia.com/gpu, 2 Insufficient memory, 2 node(s) didn't match"
    assert insufficient(m) == {"nvidia.com/gpu", "memory"}


# --- the autoscaler, fed router answers ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def answer(router: str, uptime: float, models: dict) -> dict:
    out = {}
    for name, m in models.items():
        out[name] = {"inFlight": 0, "inFlightSeconds": 0.0, "held": 0, "requests": 0, "idleSeconds": 0.0,
                     "endpoints": 1, "readyEndpoints": 1, "engineLoad": 0.0, "engineScraped": False, **m}
    return {"router": router, "version": 1, "uptime": uptime, "models": out}


def scaler() -> tuple[Autoscaler, Clock, list]:
    clock, asked = Clock(), []
    a = Autoscaler(lambda ns, name: asked.append(name), interval=1.0, clock_fn=clock, mono=clock)
    return a, clock, asked


def test_the_mean_is_the_area_under_the_curve_summed_over_router_replicas():
    a, clock, asked = scaler()
    m = md("a")
    a.track(m, "gpu", frozenset({"nvidia.com/gpu"}), 1, None)
    a.view(m)
    area = {"r1": 0.0, "r2": 0.0}
    for second in range(1, 8):  # router 1 holds 6 open, router 2 holds 4: 10 in all, 3 replicas at 4 each
        clock.t += 1
        area["r1"] += 6
        area["r2"] += 4
        a.observe("http://r1", answer("r1", second, {"ns/a": {"inFlight": 6, "inFlightSeconds": area["r1"]}}))
        a.observe("http://r2", answer("r2", second, {"ns/a": {"inFlight": 4, "inFlightSeconds": area["r2"]}}))
        a.tick()
    v = a.view(m)
    assert v.replicas == 3 and v.status["reason"] == "ScaledUp" and v.status["value"] == pytest.approx(10)
    assert asked and v.condition[:2] == ("True", "ScaledUp") and v.events[0].reason == "ScaledUp"
    # a router that restarted (a new id) starts from its own zero: no negative mean
    clock.t += 1
    a.observe("http://r1", answer("r1-new", 1, {"ns/a": {"inFlight": 6, "inFlightSeconds": 6}}))
    assert a.readings[("ns", "a")]["http://r1"].in_flight_mean == 6


def test_a_restart_during_a_burst_scales_nothing_down():
    a, clock, _ = scaler()
    m = md("a", status={"autoscaling": {"desiredReplicas": 4, "reason": "ScaledUp", "specReplicas": 1,
                                        "lastScaleTime": "2020-01-01T00:00:00Z"}})
    a.track(m, "gpu", frozenset(), 4, None)
    assert a.view(m).replicas == 4  # from the status
    for second in range(1, 29):  # quiet, for less than the scale-down delay (30 s) since the start
        clock.t += 1
        a.observe("http://r1", answer("r1", second, {"ns/a": {"idleSeconds": 500.0 + second}}))
        a.tick()
    assert a.view(m).replicas == 4
    for second in range(29, 40):
        clock.t += 1
        a.observe("http://r1", answer("r1", second, {"ns/a": {"idleSeconds": 500.0 + second}}))
        a.tick()
    assert a.view(m).replicas == 0


def test_a_held_request_wakes_a_model_at_zero_without_waiting_for_the_interval():
    a, clock, asked = scaler()
    m = md("a", status={"autoscaling": {"desiredReplicas": 0, "reason": "ScaledToZero", "specReplicas": 1}})
    a.track(m, "cpu", frozenset(), 0, None)
    a.view(m)
    assert not a.observe("http://r1", answer("r1", 1, {"ns/a": {"idleSeconds": 900}}))
    a.tick()
    assert a.view(m).replicas == 0
    urgent = a.observe("http://r1", answer("r1", 1.5, {"ns/a": {"held": 1, "inFlight": 1, "requests": 1}}))
    assert urgent
    a.tick(sample=False)
    v = a.view(m)
    assert v.replicas == 1 and v.status["reason"] == "Woken" and v.status["wokenTime"]
    assert asked[-1] == "a"


def test_no_router_no_signal_and_the_replicas_stay():
    a, clock, _ = scaler()
    m = md("a")
    a.track(m, "gpu", frozenset(), 1, None)
    clock.t += 60
    for _ in range(5):
        a.tick()
    v = a.view(m)
    assert v.replicas == 1 and v.condition[:2] == ("False", "NoSignal")


# --- rotation ----------------------------------------------------------------------------------

FULL = "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) didn't match Pod's node affinity."


def pool_of_three(priorities=(0, 0, 0), busy=()) -> tuple[Autoscaler, Clock, dict]:
    """Models a (used 100 s ago), b (used 10 s ago) serving; w wanted but unplaceable."""
    a, clock, _ = scaler()
    mds = {n: md(n, autoscaling={"priority": p, "idleSeconds": 100_000}) for n, p in zip("abw", priorities)}
    gpu = frozenset({"nvidia.com/gpu", "cpu"})
    for n, m in mds.items():
        a.track(m, "gpu", gpu, 1, FULL if n == "w" else None)
        a.view(m)
    idle = {"a": 100.0, "b": 10.0, "w": 0.0}
    for second in range(1, 25):
        clock.t += 1
        a.observe("http://r1", answer("r1", second, {
            f"ns/{n}": {"idleSeconds": 0.0 if n in busy else idle[n] + second, "inFlight": 1 if n in busy else 0,
                        "inFlightSeconds": float(second) if n in busy else 0.0} for n in mds}))
        a.tick()
    return a, clock, mds


def test_the_least_recently_used_idle_model_yields_and_both_say_so():
    a, clock, mds = pool_of_three()
    va, vw = a.view(mds["a"]), a.view(mds["w"])
    assert va.replicas == 0 and va.status["reason"] == "Yielded" and va.status["yieldedTo"] == "w"
    assert "make room in pool gpu for ModelDeployment w" in va.status["message"]
    assert [e.reason for e in va.events] == ["Yielded"]
    assert any(e.reason == "RoomMade" and "a (idle" in e.message for e in vw.events)
    assert a.view(mds["b"]).replicas == 1  # one at a time
    assert "a yielded its place" in vw.note


def test_a_model_with_requests_in_flight_or_higher_priority_does_not_yield():
    a, _, mds = pool_of_three(priorities=(5, 0, 0), busy=("b",))
    assert a.view(mds["a"]).replicas == 1 and a.view(mds["b"]).replicas == 1
    vw = a.view(mds["w"])
    waiting = [e for e in vw.events if e.reason == "WaitingForRoom"]
    assert waiting and "a: priority 5 above 0" in waiting[0].message and "b: requests in flight" in waiting[0].message


def test_a_model_that_just_woke_stays_its_residency():
    a, clock, _ = scaler()
    b = md("b", status={"autoscaling": {"desiredReplicas": 0, "reason": "ScaledToZero", "specReplicas": 1}})
    w = md("w")
    for m in (b, w):
        a.track(m, "gpu", frozenset({"nvidia.com/gpu"}), 0, None)
        a.view(m)
    a.observe("http://r1", answer("r1", 1, {"ns/b": {"held": 1, "inFlight": 1, "requests": 1}}))
    a.tick(sample=False)
    assert a.view(b).replicas == 1  # woke now
    for second in range(2, 12):  # b is idle again, but woke 10 s ago: it stays 20 s
        clock.t += 1
        a.observe("http://r1", answer("r1", second, {"ns/b": {"requests": 1, "inFlightSeconds": 1}, "ns/w": {}}))
        if second == 2:  # w asks for room once b's request is answered
            a.track(w, "gpu", frozenset({"nvidia.com/gpu"}), 1, FULL)
        a.tick()
    assert a.view(b).replicas == 1
    waiting = [e for e in a.view(w).events if e.reason == "WaitingForRoom"]
    assert len(waiting) == 1 and "b: woke at" in waiting[0].message, waiting  # said once, not every tick
    for second in range(12, 25):
        clock.t += 1
        a.observe("http://r1", answer("r1", second, {"ns/b": {"requests": 1, "inFlightSeconds": 1}, "ns/w": {}}))
        a.tick()
    assert a.view(b).replicas == 0 and a.view(b).status["yieldedTo"] == "w"


def test_a_model_that_frees_nothing_the_wanted_one_lacks_does_not_yield():
    a, clock, _ = scaler()
    cpu_only, w = md("c"), md("w")
    a.track(cpu_only, "gpu", frozenset({"cpu", "memory"}), 1, None)
    a.track(w, "gpu", frozenset({"nvidia.com/gpu"}), 1, FULL)
    for m in (cpu_only, w):
        a.view(m)
    for second in range(1, 30):
        clock.t += 1
        a.observe("http://r1", answer("r1", second, {"ns/c": {"idleSeconds": 30.0}, "ns/w": {}}))
        a.tick()
    assert a.view(cpu_only).replicas == 1


# --- what the plan does with it ------------------------------------------------------------------


def test_the_plan_sets_the_autoscalers_replicas_on_the_deployment_and_never_the_spec():
    import copy

    from modelship.reconcile.autoscaler import View
    from modelship.reconcile.plan import plan

    from .test_plan import ENDPOINT, T0, gguf, make_md, obs_deployment, observed, settings

    m, r = make_md({"replicas": 1, "maxReplicas": 4, "minReplicas": 0}), gguf()
    spec_before = copy.deepcopy(m.spec.wire())
    obs = observed(m, r, "Complete", deployment=obs_deployment(m, r, ready=1))
    view = View(3, {"desiredReplicas": 3, "reason": "ScaledUp", "message": "InFlight 10.00 ..."},
                ("True", "ScaledUp", "InFlight 10.00 ..."), [])
    p = plan(m, r, copy.deepcopy(obs), settings(), T0, ENDPOINT, scale=view)
    dep = next(a.body for a in p.actions if a.kind == "Deployment")
    assert dep["spec"]["replicas"] == 3 and m.spec.wire() == spec_before
    assert p.status["autoscaling"]["desiredReplicas"] == 3
    auto = next(c for c in p.status["conditions"] if c["type"] == "Autoscaled")
    assert (auto["status"], auto["reason"]) == ("True", "ScaledUp")
    ready = next(c for c in p.status["conditions"] if c["type"] == "Ready")
    assert (p.status["phase"], ready["status"]) == ("Ready", "True") and "scaling up" in ready["message"]
    # at zero: Ready, ScaledToZero, the next request wakes it
    zero = View(0, {"desiredReplicas": 0, "reason": "ScaledToZero", "message": "idle"}, ("True", "ScaledToZero", ""),
                [])
    from modelship import manifests
    from modelship.reconcile.policy import place

    dep0 = manifests.deployment(m, r, place(m, r.engine, settings()), settings(), replicas=0)
    dep0["metadata"]["generation"] = 1
    dep0["status"] = {"replicas": 0, "readyReplicas": 0, "updatedReplicas": 0, "observedGeneration": 1}
    p = plan(m, r, observed(m, r, "Complete", deployment=dep0), settings(), T0, ENDPOINT, scale=zero)
    ready = next(c for c in p.status["conditions"] if c["type"] == "Ready")
    assert (ready["reason"], p.status["phase"]) == ("ScaledToZero", "Ready") and "wakes it" in ready["message"]
    assert not [a for a in p.actions if a.kind == "Deployment"]
    # autoscaling turned off: its status and condition go
    plain = make_md({"replicas": 1}, status=p.status)
    p = plan(plain, r, copy.deepcopy(obs), settings(), T0, ENDPOINT)
    assert "autoscaling" not in p.status and all(c["type"] != "Autoscaled" for c in p.status["conditions"])


def test_a_model_that_yielded_waits_until_the_wanted_one_is_placed():
    """No ping-pong: a request for the model that just yielded is held until the model it made
    room for has its pods placed."""
    a, clock, mds = pool_of_three()
    assert a.view(mds["a"]).replicas == 0
    a.observe("http://r1", answer("r1", 30, {"ns/a": {"held": 1, "inFlight": 1, "requests": 1}}))
    a.tick(sample=False)
    clock.t += 1
    a.tick()
    assert a.view(mds["a"]).replicas == 0  # w is not placed yet
    a.track(mds["w"], "gpu", frozenset({"nvidia.com/gpu", "cpu"}), 1, None)  # placed
    clock.t += 1
    a.observe("http://r1", answer("r1", 31, {"ns/a": {"held": 1, "inFlight": 1, "requests": 1}}))
    a.tick()
    assert a.view(mds["a"]).replicas == 1 and a.view(mds["a"]).status["reason"] == "Woken"


def test_the_routers_are_the_ready_endpoints_of_their_service():
    from modelship.endpointslices import ready_urls
    from modelship.reconcile.kube import Kube

    slices = [{"ports": [{"name": "metrics", "port": 9}, {"name": "http", "port": 8000}],
               "endpoints": [{"addresses": ["127.0.0.5"], "conditions": {"ready": True}},
                             {"addresses": ["127.0.0.6"], "conditions": {"ready": False}},
                             {"addresses": ["fd00::1"]}]}]
    assert ready_urls(slices) == ["http://127.0.0.5:8000", "http://[fd00::1]:8000"]
    assert callable(Kube.router_urls)  # what the start-up handler gives the poller


def test_the_poller_reads_every_router_and_survives_an_answer_it_cannot_use():
    """A router that answers garbage once is polled on; a held request's answer is decided on
    at once; the poll sends back the version it was given."""
    import asyncio

    from aiohttp import web

    from modelship.reconcile.signals import RouterPoller
    from modelship.settings import AutoscalerSettings

    seen: list[dict] = []
    answers = [b'{"router": "r", "version": 7, "uptime": 0.5, "models": {"ns/a": {}}}', b"not json",
               b'{"router": "r", "version": 7, "uptime": 1, "models": {"ns/a": {"held": "x"}}}',
               orjson_dumps({"router": "r", "version": 8, "uptime": 2,
                             "models": {"ns/a": {"held": 1, "inFlight": 1, "requests": 1, "idleSeconds": 0}}})]

    async def load(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        body = answers.pop(0) if answers else orjson_dumps({"router": "r", "version": 8, "uptime": 3, "models": {}})
        if not answers:
            await asyncio.sleep(0.05)
        return web.Response(body=body, content_type="application/json")

    async def go():
        app = web.Application()
        app.router.add_get("/modelship/load", load)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        a, clock, asked = scaler()
        m = md("a", status={"autoscaling": {"desiredReplicas": 0, "reason": "ScaledToZero", "specReplicas": 1}})
        a.track(m, "cpu", frozenset(), 0, None)
        a.view(m)
        stop = asyncio.Event()
        poller = RouterPoller(AutoscalerSettings(intervalSeconds=0.2, routerUrls=[f"http://127.0.0.1:{port}"]), a)
        task = asyncio.create_task(poller.run(stop))
        for _ in range(100):
            if a.view(m).replicas == 1:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task
        await runner.cleanup()
        return a.view(m), asked

    view, asked = asyncio.run(go())
    assert view.replicas == 1 and view.status["reason"] == "Woken" and asked == ["a"]
    assert "version" not in seen[0] and [q.get("version") for q in seen[1:4]] == ["7", "7", "7"], seen


def orjson_dumps(obj) -> bytes:
    import orjson

    return orjson.dumps(obj)


def test_replicas_outside_the_bounds_are_moved_and_the_status_says_so():
    # minReplicas 2 with spec.replicas 1: it starts at 2, and the message says why (never silently)
    st = State.seed(spec(minReplicas=2, replicas=1), None, 0.0)
    assert (st.desired, st.message) == (2, "autoscaling from spec.replicas: 2 replica(s) (spec.replicas 1 is "
                                           "outside the autoscaling bounds: raised to minReplicas 2)")
    d = adjust(spec(minReplicas=2, replicas=1), State(3, 3))
    assert (d.replicas, d.reason, d.message) == (2, "ScaledBySpec", "spec.replicas changed to 1: 3 → 2 replica(s) "
                                                 "(spec.replicas 1 is outside the autoscaling bounds: raised to "
                                                 "minReplicas 2); the autoscaler goes on from there")
    # within the bounds: no note
    assert State.seed(spec(minReplicas=1, replicas=2), None, 0.0).message == \
        "autoscaling from spec.replicas: 2 replica(s)"

"""Models at zero replicas: the router holds their requests until they have a ready endpoint
(within bounds, streams kept alive), and tells the operator's autoscaler about load and
demand (`GET /modelship/load`, a long poll).

Most tests serve the app in this process (uvicorn on the test's own loop, real HTTP on
loopback), so that they can make an endpoint ready from the loop as discovery does, in front
of one fake TGI; one runs `modelship router --static` as a process, with the flags."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from modelship_testbed.procs import stop

from .test_router import HOST, error, free_port, start


@pytest.fixture(scope="module")
def engine():
    """One fake TGI, the endpoint a sleeping model wakes up to."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = start([sys.executable, "-m", "modelship_testbed.tgi_fake", "--model-id", "org/tiny", "--hostname", HOST,
                  "--port", str(port), "--fake-token-delay-ms", "2", "--fake-load-seconds", "0"], f"{url}/health",
                 "fake TGI")
    yield url
    stop(proc, 10)


def router(*targets, **limits):
    from modelship.router.app import Router
    from modelship.router.registry import Registry
    from modelship.router.server import upstream_client
    from modelship.router.settings import Limits

    reg = Registry()
    for t in targets:
        reg.put(t)
    settings = Limits(**limits)
    return Router(reg, upstream_client(settings), settings)


def asleep(name: str = "m", **kw):
    """A target autoscaled to zero: wakeable, no endpoint."""
    from modelship.router.registry import Target

    return Target(name, "tgi", wakeable=True, **kw)


@contextlib.asynccontextmanager
async def serving(app):
    """The app served by uvicorn on this loop: its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, lifespan="on", log_level="warning",
                                           timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the router did not start"
        await asyncio.sleep(0.01)
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        await task


def run(coro):
    return asyncio.run(coro)


CHAT = {"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": "wake up"}]}


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def test_a_request_for_a_model_at_zero_is_held_until_it_has_a_ready_endpoint(engine):
    from openai import AsyncOpenAI

    t = asleep()
    app = router(t)

    async def go():
        async with serving(app) as url:
            client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            started = time.monotonic()
            asyncio.get_running_loop().call_later(0.5, t.set_endpoints, {engine: True})  # as discovery does
            whole, stream = await asyncio.gather(
                client.chat.completions.create(**CHAT),
                client.chat.completions.create(**CHAT, stream=True))
            chunks = [c async for c in stream]
            return whole, chunks, time.monotonic() - started

    whole, chunks, took = run(go())
    assert whole.choices[0].message.content and whole.usage.completion_tokens == 3
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 3
    assert took >= 0.5
    assert (t.demand.held, t.demand.in_flight, t.demand.requests) == (0, 0, 2)


def test_a_held_stream_gets_keepalive_comments_then_the_engines_events(engine):
    t = asleep()
    app = router(t, hold_keepalive_seconds=0.2)

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            asyncio.get_running_loop().call_later(1.0, t.set_endpoints, {engine: True})
            started = time.monotonic()
            lines = []
            async with c.stream("POST", "/models/m/generate_stream",
                                json={"inputs": "hello", "parameters": {"max_new_tokens": 4}}) as r:
                head = (r.status_code, r.headers["content-type"], time.monotonic() - started)
                async for line in r.aiter_lines():
                    if line:
                        lines.append((time.monotonic() - started, line))
            return head, lines

    (status, ctype, head_after), lines = run(go())
    assert status == 200 and ctype.startswith("text/event-stream") and head_after < 0.5  # the head at once
    comments = [(at, line) for at, line in lines if line.startswith(":")]
    events = [(at, line) for at, line in lines if line.startswith("data:")]
    assert 3 <= len(comments) <= 6, lines
    assert comments[0][1] == ': modelship: model "m" is starting from zero replicas; waited 0 s'
    assert all(at < 1.1 for at, _ in comments) and comments[0][0] < 0.5  # while it waited, one every 0.2 s
    assert len(events) == 4 and events[0][0] >= 0.95, lines  # then the engine's own events
    assert json.loads(events[-1][1][5:])["details"]["generated_tokens"] == 4


def test_the_hold_is_bounded_429_past_the_count_and_503_past_the_time():
    t = asleep()
    app = router(t, hold_max_requests=2, hold_max_seconds=1, hold_keepalive_seconds=0.3)

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            started = time.monotonic()
            held = asyncio.gather(c.post("/v1/chat/completions", json=CHAT),
                                  c.post("/v1/chat/completions", json={**CHAT, "stream": True}))
            await until(lambda: t.demand.held == 2)
            third = await c.post("/v1/chat/completions", json=CHAT)
            refused_after = time.monotonic() - started
            whole, streamed = await held
            return third, refused_after, whole, streamed, time.monotonic() - started

    third, refused_after, whole, streamed, took = run(go())
    assert third.status_code == 429 and third.headers["retry-after"] == "5" and refused_after < 0.5
    e = error(third)
    assert (e["type"], e["code"]) == ("service_unavailable", "model_starting")
    assert "starting from zero replicas" in e["message"] and "2 requests already wait" in e["message"]
    assert 1.0 <= took < 2
    assert whole.status_code == 503 and whole.headers["retry-after"] == "5"
    e = error(whole)
    assert e["code"] == "model_starting" and "after 1 s of waiting" in e["message"] and "try again in 5 s" in e["message"]
    # A streamed one has its head already: the error is its last event.
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = [line for line in streamed.text.splitlines() if line]
    assert events[0].startswith(': modelship: model "m" is starting from zero replicas')
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "model_starting"
    assert t.demand.held == 0 and t.demand.requests == 3
    metrics = run(_get(app, "/metrics")).text
    assert 'modelship_router_requests_total{code="429",endpoint="",model="m"} 1.0' in metrics
    assert 'modelship_router_requests_total{code="503",endpoint="",model="m"} 2.0' in metrics


async def _get(app, path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as c:
        return await c.get(path)


def test_an_engine_error_after_the_hold_is_the_streams_last_event(engine):
    t = asleep()
    app = router(t)

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            asyncio.get_running_loop().call_later(0.3, t.set_endpoints, {engine: True})
            return await c.post("/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 5000})

    r = run(go())
    assert r.status_code == 200
    events = [line for line in r.text.splitlines() if line.startswith("data:")]
    assert len(events) == 1, r.text
    e = json.loads(events[0][5:])["error"]
    assert e["type"] == "invalid_request_error" and "answered 422" in e["message"] and "max_new_tokens" in e["message"]


def test_a_held_client_that_leaves_is_dropped(engine):
    t = asleep()
    app = router(t)

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            for body in (CHAT, {**CHAT, "stream": True}):
                request = asyncio.create_task(c.post("/v1/chat/completions", json=body))
                await until(lambda: t.demand.held == 1)
                report = (await c.get("/modelship/load")).json()["models"]["m"]
                assert (report["held"], report["inFlight"]) == (1, 1)
                assert 'modelship_router_held_requests{model="m"} 1.0' in (await c.get("/metrics")).text
                request.cancel()  # the client goes away: its connection closes
                with contextlib.suppress(asyncio.CancelledError):
                    await request
                await until(lambda: t.demand.held == 0)
            return (await c.get("/modelship/load")).json()["models"]["m"], (await c.get("/metrics")).text

    report, metrics = run(go())
    assert (report["held"], report["inFlight"], report["requests"]) == (0, 0, 2)
    assert 'modelship_router_requests_total{code="499",endpoint="",model="m"} 2.0' in metrics
    assert 'modelship_router_held_requests{model="m"} 0.0' in metrics


def test_load_answers_at_once_without_a_version_and_waits_with_the_current_one():
    from modelship.router.registry import Target

    awake = Target("awake", "tgi")
    awake.set_endpoints({"http://127.0.0.1:9": True})
    t = asleep()
    app = router(t, awake)
    app.set_api_keys(["s3cret"])  # the operator needs none

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            started = time.monotonic()
            first = (await c.get("/modelship/load", params={"wait": 5})).json()  # no version: at once
            at_once = time.monotonic() - started
            started = time.monotonic()
            same = (await c.get("/modelship/load", params={"version": first["version"], "wait": 0.5})).json()
            waited = time.monotonic() - started
            poll = asyncio.create_task(c.get("/modelship/load", params={"version": first["version"], "wait": 10}))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            held = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT,
                                              headers={"authorization": "Bearer s3cret"}))
            moved = (await poll).json()
            woke = time.monotonic() - started
            stale = await c.get("/modelship/load", params={"version": first["version"] + 7, "wait": 10})
            bad = await c.get("/modelship/load", params={"version": "x"})
            held.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await held
            await until(lambda: t.demand.in_flight == 0)
            return first, at_once, same, waited, moved, woke, stale, bad

    first, at_once, same, waited, moved, woke, stale, bad = run(go())
    assert at_once < 0.3 and set(first) == {"router", "version", "uptime", "models"}
    assert set(first["models"]) == {"m", "awake"}  # every target
    assert first["models"]["m"] == {"inFlight": 0, "inFlightSeconds": 0.0, "held": 0, "requests": 0,
                                    "idleSeconds": pytest.approx(first["uptime"]), "endpoints": 0,
                                    "readyEndpoints": 0, "engineLoad": 0.0, "engineScraped": False}
    assert first["models"]["awake"]["readyEndpoints"] == 1
    assert 0.45 <= waited < 1.5 and same["version"] == first["version"]
    assert woke < 0.5 and moved["version"] == first["version"] + 1, moved
    assert moved["models"]["m"]["held"] == 1 and moved["router"] == first["router"]
    assert stale.status_code == 200 and stale.json()["version"] == first["version"] + 1  # another version: at once
    assert bad.status_code == 400


def test_a_poll_whose_client_leaves_ends_at_once():
    """No task waits on for a poller that is gone."""
    app = router(asleep())

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            before = len(asyncio.all_tasks())
            poll = asyncio.create_task(c.get("/modelship/load", params={"version": app.load.version, "wait": 20}))
            await asyncio.sleep(0.3)
            waiting = len(asyncio.all_tasks())
            poll.cancel()  # the connection closes
            with contextlib.suppress(asyncio.CancelledError):
                await poll
            started = time.monotonic()
            await until(lambda: len(asyncio.all_tasks()) <= before, timeout=3)
            return waiting - before, time.monotonic() - started

    more, ended = run(go())
    assert more >= 3 and ended < 1  # the client's, the server's and its watcher: gone with the client


def test_in_flight_seconds_is_the_area_under_the_in_flight_count():
    """Two requests open for about a second give two seconds: from two readings, the operator
    gets the mean in flight between them exactly."""
    t = asleep()
    app = router(t, hold_max_seconds=1.2)

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            held = asyncio.gather(c.post("/v1/chat/completions", json=CHAT), c.post("/v1/completions", json={
                "model": "m", "prompt": "hi", "stream": True}))
            await until(lambda: t.demand.held == 2)
            first = (await c.get("/modelship/load")).json()
            await asyncio.sleep(0.8)
            second = (await c.get("/modelship/load")).json()
            await held
            await asyncio.sleep(0.3)
            return first, second, (await c.get("/modelship/load")).json(), (await c.get("/metrics")).text

    first, second, after, metrics = run(go())
    a, b, c = first["models"]["m"], second["models"]["m"], after["models"]["m"]
    assert a["inFlight"] == b["inFlight"] == 2 and a["idleSeconds"] == b["idleSeconds"] == 0
    elapsed = second["uptime"] - first["uptime"]
    assert b["inFlightSeconds"] - a["inFlightSeconds"] == pytest.approx(2 * elapsed, abs=1e-6)
    assert 1.4 < b["inFlightSeconds"] < 2.6
    assert c["inFlight"] == 0 and c["requests"] == 2 and 0.25 < c["idleSeconds"] < 1  # since they ended
    assert 2.2 < c["inFlightSeconds"] < 2.8  # both ended after ~1.2 s each
    assert 'modelship_router_in_flight_seconds_total{model="m"} 2.' in metrics


def test_the_load_report_sums_the_engines_scraped_load():
    """engineLoad: what the ready endpoints' engines said they run and queue, where they said it."""
    from modelship.router.registry import Target
    from modelship.router.scrape import scrape_once

    pages = {"http://a": "tgi_batch_current_size 3\ntgi_queue_size 2\n", "http://b": "nothing here 1\n",
             "http://c": "tgi_batch_current_size 9\n"}

    class Pages:
        async def get(self, url, timeout):
            return 200, pages[url.removesuffix("/metrics")].encode()

    t, quiet = Target("m", "tgi"), Target("quiet", "tgi")
    t.set_endpoints({"http://a": True, "http://b": True, "http://c": False})  # c is not ready: not counted
    quiet.set_endpoints({"http://b": True})
    app = router(t, quiet)
    unscraped = run(_get(app, "/modelship/load")).json()["models"]["m"]
    assert (unscraped["engineLoad"], unscraped["engineScraped"]) == (0.0, False)
    assert (unscraped["endpoints"], unscraped["readyEndpoints"]) == (3, 2)
    run(scrape_once(app.registry, Pages()))
    models = run(_get(app, "/modelship/load")).json()["models"]
    assert (models["m"]["engineLoad"], models["m"]["engineScraped"]) == (5.0, True)
    assert models["quiet"]["engineScraped"] is False  # its engine said nothing of its load


def test_a_model_at_zero_that_cannot_be_woken_is_a_503_at_once():
    from modelship.router.registry import Target

    t = Target("m", "tgi")
    t.set_endpoints({"http://127.0.0.1:9": False})
    app = router(t)
    v0 = app.load.version

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            started = time.monotonic()
            r = await c.post("/v1/chat/completions", json=CHAT)
            return r, time.monotonic() - started, (await c.get("/modelship/load")).json()

    r, took, load = run(go())
    assert r.status_code == 503 and error(r)["code"] == "no_ready_endpoint" and took < 0.5
    assert load["version"] == v0 and load["models"]["m"]["requests"] == 1


def test_a_wakeable_model_with_a_ready_fallback_goes_there_and_moves_the_version(engine):
    from modelship.router.registry import Target

    big = asleep("big", fallback=["small"])
    small = Target("small", "tgi")
    small.set_endpoints({engine: True})
    app = router(big, small)
    v0 = app.load.version

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            started = time.monotonic()
            r = await c.post("/v1/chat/completions", json={**CHAT, "model": "big"})
            took = time.monotonic() - started
            for _ in range(2):  # more at once: the version moves once (the operator's poll is not woken per request)
                assert (await c.post("/v1/chat/completions", json={**CHAT, "model": "big"})).status_code == 200
            return r, took, (await c.get("/modelship/load")).json(), (await c.get("/v1/models")).json()

    r, took, load, models = run(go())
    assert r.status_code == 200 and took < 1
    assert load["version"] == v0 + 1
    assert load["models"]["big"]["requests"] == 3 and load["models"]["small"]["requests"] == 0  # the one it named
    assert load["models"]["big"]["inFlight"] == 0 and load["models"]["big"]["idleSeconds"] < 1
    listed = {m["id"]: m["modelship"] for m in models["data"]}
    assert listed["big"]["target"] == "small" and listed["big"]["state"] == "serving"  # its fallback answers


def test_models_lists_a_model_at_zero_it_can_wake():
    from modelship.router.registry import Target

    awake = Target("awake", "tgi")
    awake.set_endpoints({"http://127.0.0.1:9": True})
    down = Target("down", "tgi")  # not ready and cannot be woken: not listed
    down.set_endpoints({"http://127.0.0.1:9": False})
    app = router(asleep("m", aliases=["sleepy"]), awake, down)
    listed = {m["id"]: m["modelship"] for m in run(_get(app, "/v1/models")).json()["data"]}
    assert set(listed) == {"m", "sleepy", "awake"}
    assert listed["m"] == {"target": "m", "engine": "tgi", "ready_endpoints": 0, "state": "scaled-to-zero"}
    assert listed["awake"]["state"] == "serving" and listed["awake"]["ready_endpoints"] == 1


def test_a_held_request_follows_its_model_when_discovery_rebuilds_or_removes_it(engine):
    """A changed strategy rebuilds the target: a request held for the old one goes on with the
    new one; a removed model ends its held requests at once."""
    from modelship.router.discovery import State

    from .test_discovery import eslice, md

    state = State()
    autoscaled = {"maxReplicas": 3, "minReplicas": 0}
    state.on_model("ADDED", md("a", "chat", "tgi", spec=autoscaled))
    state.on_model("ADDED", md("a", "gone", "tgi", spec=autoscaled))
    app = router()
    state.apply(app.registry)
    before = app.registry.targets["a/chat"]
    assert before.wakeable and before.strategy.name == "prefix-cache"
    port = int(engine.rsplit(":", 1)[1])
    ready = eslice("a", "chat", [("127.0.0.1", True, False)])
    ready["ports"][0]["port"] = port

    def rebuild() -> None:
        state.on_model("MODIFIED", md("a", "chat", "tgi", spec=autoscaled, loadBalancing={"strategy": "least-load"}))
        state.apply(app.registry)

    def wake() -> None:
        state.on_slice("ADDED", ready)
        state.apply(app.registry)

    def remove() -> None:
        state.on_model("DELETED", md("a", "gone"))
        state.apply(app.registry)

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, rebuild)
            loop.call_later(0.6, wake)
            loop.call_later(0.3, remove)
            started = time.monotonic()
            answered, removed = await asyncio.gather(
                c.post("/v1/chat/completions", json={**CHAT, "model": "chat"}),
                c.post("/v1/chat/completions", json={**CHAT, "model": "gone"}))
            return answered, removed, time.monotonic() - started, (await c.get("/modelship/load")).json()

    answered, removed, took, load = run(go())
    after = app.registry.targets["a/chat"]
    assert after is not before and after.strategy.name == "least-load"
    assert answered.status_code == 200, answered.text
    assert removed.status_code == 404 and error(removed)["code"] == "model_not_found" and took < 2
    assert load["models"]["a/chat"]["requests"] == 1 and load["models"]["a/chat"]["inFlight"] == 0  # kept


def test_the_router_command_holds_within_its_flags(tmp_path):
    """`modelship router --static` with a model asleep for good (wakeable, no endpoint) and the
    hold's flags: one held, the next refused, the held one let go after its time."""
    path = tmp_path / "static.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "m", "engine": "tgi", "wakeable": True}]}))
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = start([str(Path(sys.executable).with_name("modelship")), "router", "--static", str(path), "--host", HOST,
                  "--port", str(port), "--hold-max-requests", "1", "--hold-max-seconds", "1",
                  "--scrape-interval", "0"], f"{url}/health", "router")
    try:
        async def go():
            async with httpx.AsyncClient(base_url=url, timeout=10) as c:
                version = (await c.get("/modelship/load")).json()["version"]
                poll = asyncio.create_task(c.get("/modelship/load", params={"version": version, "wait": 10}))
                held = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
                moved = (await poll).json()
                refused = await c.post("/v1/chat/completions", json=CHAT)
                return moved, refused, await held

        moved, refused, held = run(go())
        assert moved["models"]["m"]["held"] == 1
        assert refused.status_code == 429 and error(refused)["code"] == "model_starting"
        assert held.status_code == 503 and error(held)["code"] == "model_starting"
    finally:
        stop(proc, 10)
    said = proc.said()
    assert "Traceback" not in said, said[-3000:]


def test_a_held_request_goes_to_a_starting_pod_as_soon_as_its_engine_is_healthy(engine):
    """The router asks a starting pod's /health itself while requests are held (as Knative's
    activator does): the pod serves the held request before the EndpointSlice says it is
    ready, which here it never does. A pod whose engine is not healthy yet gets nothing."""
    t = asleep()
    dead = f"http://{HOST}:{free_port()}"  # a starting pod whose engine does not listen yet
    app = router(t)

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            # (no endpoint when the request comes: the pods appear, starting, while it is held)
            asyncio.get_running_loop().call_later(0.3, t.set_endpoints, {dead: False, engine: False})
            started = time.monotonic()
            r = await c.post("/v1/chat/completions", json=CHAT)
            return r, time.monotonic() - started

    r, took = run(go())
    assert r.status_code == 200, r.text
    assert 0.3 <= took < 2.0
    assert t.endpoints[engine].ready and not t.endpoints[dead].ready
    assert not app.forwarder.probing  # the probe is done
    # An event that still calls it not ready (the kubelet's probe has not run yet) does not
    # take it back: the router found it healthy, and keeps it for a while.
    t.set_endpoints({dead: False, engine: False})
    assert t.endpoints[engine].ready


def test_keepalive_comments_keep_their_pace_while_pods_come_and_go(engine):
    """Wakes (a starting pod appearing) do not push the next comment back: a stream held
    while pods churn faster than the keep-alive still gets its comments."""
    t = asleep()
    app = router(t, hold_keepalive_seconds=0.2)
    dead = [f"http://{HOST}:{free_port()}" for _ in range(4)]

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            loop = asyncio.get_running_loop()
            for i, at in enumerate((0.1, 0.25, 0.4, 0.55)):  # a new starting pod every 0.15 s
                loop.call_later(at, t.set_endpoints, {u: False for u in dead[:i + 1]})
            loop.call_later(0.7, t.set_endpoints, {engine: True})
            async with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
                return [line async for line in r.aiter_lines() if line]

    lines = run(go())
    comments = [line for line in lines if line.startswith(":")]
    assert len(comments) >= 2, lines[:4]
    assert any(line.startswith("data:") for line in lines[len(comments):])

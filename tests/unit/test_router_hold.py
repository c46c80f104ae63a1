"""Models at zero replicas: the router holds their requests until they have a ready endpoint
(within bounds, streams kept alive).

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
    assert t.demand.held == 0


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
    assert t.demand.held == 0
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
                assert 'modelship_router_held_requests{model="m"} 1.0' in (await c.get("/metrics")).text
                request.cancel()  # the client goes away: its connection closes
                with contextlib.suppress(asyncio.CancelledError):
                    await request
                await until(lambda: t.demand.held == 0)
            return (await c.get("/metrics")).text

    metrics = run(go())
    assert 'modelship_router_requests_total{code="499",endpoint="",model="m"} 2.0' in metrics
    assert 'modelship_router_held_requests{model="m"} 0.0' in metrics


def test_a_model_at_zero_that_cannot_be_woken_is_a_503_at_once():
    from modelship.router.registry import Target

    t = Target("m", "tgi")
    t.set_endpoints({"http://127.0.0.1:9": False})
    app = router(t)

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            started = time.monotonic()
            r = await c.post("/v1/chat/completions", json=CHAT)
            return r, time.monotonic() - started

    r, took = run(go())
    assert r.status_code == 503 and error(r)["code"] == "no_ready_endpoint" and took < 0.5


def test_a_wakeable_model_with_a_ready_fallback_goes_there(engine):
    from modelship.router.registry import Target

    big = asleep("big", fallback=["small"])
    small = Target("small", "tgi")
    small.set_endpoints({engine: True})
    app = router(big, small)

    async def go():
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            started = time.monotonic()
            r = await c.post("/v1/chat/completions", json={**CHAT, "model": "big"})
            took = time.monotonic() - started
            return r, took, (await c.get("/v1/models")).json()

    r, took, models = run(go())
    assert r.status_code == 200 and took < 1
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
            return answered, removed, time.monotonic() - started

    answered, removed, took = run(go())
    after = app.registry.targets["a/chat"]
    assert after is not before and after.strategy.name == "least-load"
    assert answered.status_code == 200, answered.text
    assert removed.status_code == 404 and error(removed)["code"] == "model_not_found" and took < 2


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
                held = asyncio.create_task(c.post("/v1/chat/completions", json=CHAT))
                while 'modelship_router_held_requests{model="m"} 1.0' not in (await c.get("/metrics")).text:
                    await asyncio.sleep(0.02)
                refused = await c.post("/v1/chat/completions", json=CHAT)
                return refused, await held

        refused, held = run(go())
        assert refused.status_code == 429 and error(refused)["code"] == "model_starting"
        assert held.status_code == 503 and error(held)["code"] == "model_starting"
    finally:
        stop(proc, 10)
    said = proc.stderr.read()
    assert "Traceback" not in said, said[-3000:]

"""`modelship router` as a process, in front of TGI-protocol fakes, with real clients: the
`openai` client, the `text-generation` client, curl; errors in OpenAI's shape."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from modelship_testbed.procs import collect_stderr, stop

HOST = "127.0.0.1"
HI = [{"role": "user", "content": "hi"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_http(url: str, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.1)


def start(argv: list[str], health: str, what: str, drained: bool = True) -> subprocess.Popen:
    """A process, once it answers `health`. Its stderr is read as it comes (`proc.said()` gives
    it all once it has exited), unless `drained` is False: then it is a pipe nobody reads."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.said = collect_stderr(proc) if drained else proc.stderr.read
    try:
        wait_http(health, what)
    except AssertionError:
        proc.kill()
        raise AssertionError(f"{what} did not start: {proc.said()[-2000:]}") from None
    return proc


@pytest.fixture(scope="module")
def backends():
    """Three fake TGIs, each with its own request counter (`/metrics`)."""
    procs, urls = [], []
    for _ in range(3):
        port = free_port()
        urls.append(f"http://{HOST}:{port}")
        procs.append(start([sys.executable, "-m", "modelship_testbed.tgi_fake", "--model-id", "org/tiny",
                            "--hostname", HOST, "--port", str(port), "--fake-token-delay-ms", "2",
                            "--fake-load-seconds", "0"], f"{urls[-1]}/health", "fake TGI"))
    yield urls
    for p in procs:
        stop(p, 10)


@pytest.fixture(scope="module")
def router(backends, tmp_path_factory):
    dead = f"http://{HOST}:{free_port()}"  # nothing listens there
    config = {"models": [
        {"name": "tiny", "engine": "tgi", "endpoints": backends, "aliases": ["tiny-latest"], "tasks": ["chat"],
         "strategy": "least-load"},
        {"name": "cpu-model", "engine": "llamacpp", "endpoints": [backends[0]]},
        {"name": "half-dead", "engine": "tgi", "endpoints": [dead, backends[1]], "strategy": "round-robin"},
        {"name": "dead", "engine": "tgi", "endpoints": [dead]},
    ]}
    yield from static_router(tmp_path_factory, config, "--max-body-bytes", "100000", "--retries", "2")


def static_router(tmp_path_factory, config: dict, *flags: str):
    """`modelship router --static` on `config` (a fixture's body): yields its URL; on the way
    out, stopped, and its exit and stderr checked."""
    path = tmp_path_factory.mktemp("router") / "static.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = start([str(Path(sys.executable).with_name("modelship")), "router", "--static", str(path), "--host", HOST,
                  "--port", str(port), *flags], f"{url}/health", "router")
    yield url
    code = stop(proc, 20)  # uvicorn drains, then exits by the signal it was sent
    said = proc.said()
    assert code in (0, -15) and "Traceback" not in said, said[-3000:]


def counts(backends: list[str]) -> list[int]:
    """Requests each fake TGI has served, from its own metrics."""
    out = []
    for b in backends:
        text = httpx.get(f"{b}/metrics").text
        out.append(int(sum(float(line.split()[-1]) for line in text.splitlines()
                           if line.startswith("tgi_request_count"))))
    return out


def test_openai_client_chat_completions_and_streams(router):
    from openai import OpenAI

    client = OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="tiny", max_tokens=5,
                                       messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert r.choices[0].message.content and r.usage.completion_tokens == 5
    chunks = list(client.chat.completions.create(model="tiny-latest", max_tokens=4, stream=True,
                                                 messages=[{"role": "user", "content": "Stream, please"}]))
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 4
    text = client.completions.create(model="chat", prompt="Once upon a time", max_tokens=3)  # a task name
    assert text.choices[0].text
    streamed = list(client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=3, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text.choices[0].text


def test_models_lists_every_name_a_request_may_use(router):
    from openai import OpenAI

    ids = {m.id for m in OpenAI(base_url=f"{router}/v1", api_key="x").models.list()}
    assert {"tiny", "tiny-latest", "chat", "cpu-model", "half-dead", "dead"} <= ids


def test_tgi_client_through_the_model_path(router):
    from text_generation import Client

    c = Client(f"{router}/models/tiny")
    direct = c.generate("Hello there", max_new_tokens=6)
    assert direct.details.generated_tokens == 6
    events = list(c.generate_stream("Hello there", max_new_tokens=6))
    assert "".join(e.token.text for e in events) == direct.generated_text
    assert httpx.get(f"{router}/models/tiny/info").json()["model_id"] == "org/tiny"


def test_curl_sees_server_sent_events_as_they_come(router):
    out = subprocess.run(["curl", "-sN", f"{router}/v1/chat/completions", "-H", "content-type: application/json",
                          "-d", '{"model":"tiny","stream":true,"max_tokens":3,'
                                '"messages":[{"role":"user","content":"hi"}]}'],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    import json

    events = [json.loads(line[5:]) for line in out.splitlines() if line.startswith("data:")]  # passed through as is
    assert len(events) == 3 and all(e["object"] == "chat.completion.chunk" for e in events)


def error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and {"message", "type", "code"} <= set(body["error"]), body
    return body["error"]


def test_errors_come_in_openai_shape(router):
    chat = f"{router}/v1/chat/completions"
    r = httpx.post(chat, json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and "'nope' does not exist" in error(r)["message"] and "tiny" in error(r)["message"]
    r = httpx.post(chat, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in error(r)["message"]
    r = httpx.post(chat, json={"model": "tiny", "messages": [{"role": "user", "content": "x" * 200_000}]})
    assert r.status_code == 413 and "limit" in error(r)["message"]
    r = httpx.post(chat, json={"model": "dead", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 502 and error(r)["code"] == "bad_gateway"
    r = httpx.post(f"{router}/models/cpu-model/generate", json={"inputs": "hi"})
    assert r.status_code == 400 and "llama.cpp" in error(r)["message"] and "/v1/chat/completions" in error(r)["message"]
    r = httpx.get(f"{router}/v2/nothing")
    assert r.status_code == 404 and "/v1/chat/completions" in error(r)["message"]


def test_a_connect_error_is_retried_on_another_endpoint(router):
    for _ in range(4):  # round robin: every other request meets the dead endpoint first
        r = httpx.post(f"{router}/v1/completions", json={"model": "half-dead", "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200, r.text
    metrics = httpx.get(f"{router}/metrics").text
    assert 'modelship_router_retries_total{model="half-dead",reason="connect"}' in metrics


def test_load_is_spread_over_every_endpoint(router, backends):
    import concurrent.futures

    before = counts(backends)

    def one(i: int) -> int:
        return httpx.post(f"{router}/v1/completions", timeout=30,
                          json={"model": "tiny", "prompt": f"request {i}", "max_tokens": 8}).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        assert set(pool.map(one, range(60))) == {200}
    served = [a - b for a, b in zip(counts(backends), before)]
    assert sum(served) == 60 and min(served) >= 8, served  # least-load: all three take a share


def test_a_client_that_goes_away_cancels_its_upstream_request(router, backends):
    def busy() -> float:
        total = 0.0
        for b in backends:
            for line in httpx.get(f"{b}/metrics").text.splitlines():
                if line.startswith(("tgi_batch_current_size", "tgi_queue_size")):
                    total += float(line.split()[-1])
        return total

    with httpx.stream("POST", f"{router}/v1/completions", timeout=30,
                      json={"model": "tiny", "prompt": "a long story", "max_tokens": 2000, "stream": True}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data:")  # streaming has begun (2000 tokens: 4 s at 2 ms each)
        assert busy() >= 1
    deadline = time.monotonic() + 3
    while busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert busy() == 0, "the backend still generates for a client that left"


# --- in-process: the router app with hand-made registries -----------------------------------


def call(app, method: str, path: str, **kw) -> httpx.Response:
    import asyncio

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as c:
            return await c.request(method, path, **kw)

    return asyncio.run(go())


def app_with(targets, limits=None, api_keys=None):
    from modelship.router.app import Router
    from modelship.router.settings import Limits
    from modelship.router.registry import Registry
    from modelship.router.server import upstream_client

    reg = Registry()
    for t in targets:
        reg.put(t)
    limits = limits or Limits()
    return Router(reg, upstream_client(limits), limits, api_keys)


def test_no_ready_endpoint_is_503_with_retry_after_and_counted():
    from modelship.router.registry import Target

    t = Target("warming")
    t.set_endpoints({"http://127.0.0.1:9": False})  # a pod that is not ready yet
    app = app_with([t])
    r = call(app, "POST", "/v1/chat/completions", json={"model": "warming", "messages": HI})
    assert r.status_code == 503 and r.headers["retry-after"] == "5" and error(r)["code"] == "no_ready_endpoint"
    assert call(app, "GET", "/v1/models").json()["data"] == []  # only what can answer is listed
    # The router's own answers count in the requests a model got (its 5xx alert sees them).
    t.set_endpoints({"http://127.0.0.1:9": True})  # ready, but nothing listens: 502 after the tries
    assert call(app, "POST", "/v1/chat/completions", json={"model": "warming", "messages": HI}).status_code == 502
    metrics = call(app, "GET", "/metrics").text
    assert 'modelship_router_requests_total{code="503",endpoint="",model="warming"} 1.0' in metrics
    assert 'modelship_router_requests_total{code="502",endpoint="",model="warming"} 1.0' in metrics


def test_api_keys_are_required_when_configured():
    from modelship.router.registry import Target

    app = app_with([Target("m")], api_keys=["s3cret"])
    r = call(app, "GET", "/v1/models")
    assert r.status_code == 401 and error(r)["code"] == "invalid_api_key"
    assert call(app, "GET", "/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert call(app, "GET", "/v1/models", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert call(app, "GET", "/health").status_code == 200  # probes need no key


def test_an_endpoint_that_never_answers_is_a_504_and_its_connection_is_closed():
    """The engine learns that nobody waits any more: the router closes the connection (an
    engine stops working on a request whose connection is gone)."""
    import threading

    from modelship.router.settings import Limits
    from modelship.router.registry import Target

    seen: dict[str, float] = {}

    def engine(listener: socket.socket) -> None:  # reads the request, never answers, waits for EOF
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            seen["request"] = time.monotonic()
            while conn.recv(65536):
                pass
            seen["closed"] = time.monotonic()

    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(8)
        thread = threading.Thread(target=engine, args=(silent,), daemon=True)
        thread.start()
        t = Target("slow", engine="tgi")
        t.set_endpoints({f"http://{HOST}:{silent.getsockname()[1]}": True})
        app = app_with([t], Limits(first_byte_timeout=0.5))

        async def go() -> tuple[httpx.Response, bool]:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as c:
                r = await c.post("/v1/completions", json={"model": "slow", "prompt": "hi"})
            for _ in range(100):  # the loop still runs: closing it cannot be what closes the connection
                if "closed" in seen:
                    return r, True
                await asyncio.sleep(0.01)
            return r, False

        import asyncio

        started = time.monotonic()
        r, closed = asyncio.run(go())
        thread.join(5)
    assert r.status_code == 504 and error(r)["code"] == "gateway_timeout" and time.monotonic() - started < 5
    assert closed, "the router left the connection open: the engine would go on working for nobody"


def test_scrape_reads_tgi_and_llamacpp_metrics():
    from modelship.router.scrape import parse

    assert parse("# TYPE tgi_queue_size gauge\ntgi_queue_size 3\ntgi_batch_current_size 5\n") == (5.0, 3.0, None)
    llama = ('# HELP llamacpp:requests_processing x\nllamacpp:requests_processing 2\n'
             'llamacpp:requests_deferred{slot="a"} 1\nllamacpp:prompt_tokens_total 99\n')
    assert parse(llama) == (2.0, 1.0, None)
    assert parse("process_cpu_seconds_total 1\n") is None


def test_the_engines_own_load_is_scraped_into_the_endpoints(backends):
    import asyncio

    from modelship.router.registry import Target, Registry
    from modelship.router.scrape import scrape_once
    from modelship.router.upstream import AiohttpUpstream

    reg, t = Registry(), Target("tiny", "tgi")
    t.set_endpoints({b: True for b in backends})
    reg.put(t)
    with httpx.stream("POST", f"{backends[0]}/generate_stream", timeout=30,
                      json={"inputs": "keep busy", "parameters": {"max_new_tokens": 1000}}) as r:
        lines = r.iter_lines()
        for _ in range(3):  # a few tokens in: generating
            next(lines)

        async def go() -> int:
            client = AiohttpUpstream(connect_timeout=2)
            try:
                return await scrape_once(reg, client)
            finally:
                await client.aclose()

        assert asyncio.run(go()) == 3
    loads = [t.endpoints[b].load for b in backends]
    assert loads == [1.0, 0.0, 0.0]  # the engine's own count, seen by a router that sent nothing


def test_scraped_loads_are_smoothed_so_one_snapshot_does_not_move_conversations():
    """A count scraped once is a snapshot of a number that moves with every request: the first
    read is taken as it is, later ones move the estimate by SMOOTHING of the difference."""
    import asyncio

    from modelship.router.registry import Registry, Target
    from modelship.router.scrape import SMOOTHING, scrape_once

    pages = iter(["tgi_batch_current_size 6\ntgi_queue_size 2\n", "tgi_batch_current_size 0\ntgi_queue_size 0\n",
                  "tgi_batch_current_size 0\ntgi_queue_size 0\n"])

    class Pages:
        async def get(self, url, timeout):
            return 200, next(pages).encode()

    reg, t = Registry(), Target("tiny", "tgi")
    t.set_endpoints({"http://127.0.0.1:1": True})
    reg.put(t)
    e = t.endpoints["http://127.0.0.1:1"]
    asyncio.run(scrape_once(reg, Pages()))
    assert (e.running, e.waiting) == (6.0, 2.0)
    asyncio.run(scrape_once(reg, Pages()))  # a moment with nothing running: not taken at its word
    assert e.running == pytest.approx(6 * (1 - SMOOTHING)) and e.load > 2
    asyncio.run(scrape_once(reg, Pages()))
    assert e.running == pytest.approx(6 * (1 - SMOOTHING) ** 2)


def own_router(tmp_path, backend: str) -> tuple[subprocess.Popen, str]:
    path = tmp_path / "static.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "solo", "engine": "tgi", "endpoints": [backend]}]}))
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = start([str(Path(sys.executable).with_name("modelship")), "router", "--static", str(path), "--host", HOST,
                  "--port", str(port), "--drain-seconds", "20"], f"{url}/health", "router")
    return proc, url


def own_backend(token_ms: int = 5) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = start([sys.executable, "-m", "modelship_testbed.tgi_fake", "--model-id", "org/tiny", "--hostname", HOST,
                  "--port", str(port), "--fake-token-delay-ms", str(token_ms), "--fake-load-seconds", "0"],
                 f"{url}/health", "fake TGI")
    return proc, url


def test_events_pass_through_as_they_come_not_when_the_answer_ends(tmp_path):
    """No buffering on the way: with a token every 150 ms, the first event is through long
    before the last one (a client library that reads ahead before handing over the answer
    would deliver them all at the end)."""
    backend, burl = own_backend(token_ms=150)
    router_proc, url = own_router(tmp_path, burl)
    try:
        # A first request, not timed: a fresh router (and backend) spend their first request's
        # time on connections and lazy setup, which a loaded machine stretches past 0.6 s.
        httpx.post(f"{url}/v1/completions", timeout=30,
                   json={"model": "solo", "prompt": "warm up", "max_tokens": 1}).raise_for_status()
        started = time.monotonic()
        with httpx.stream("POST", f"{url}/v1/completions", timeout=30,
                          json={"model": "solo", "prompt": "slowly", "max_tokens": 8, "stream": True}) as r:
            arrivals = [time.monotonic() - started for line in r.iter_lines() if line.startswith("data:")]
        assert len(arrivals) >= 8
        assert arrivals[0] < 0.6 and arrivals[-1] - arrivals[0] > 0.8, arrivals
    finally:
        stop(router_proc, 10)
        stop(backend, 10, signal.SIGKILL)


def test_sigterm_drains_open_streams(tmp_path):
    import signal

    backend, burl = own_backend()
    router_proc, url = own_router(tmp_path, burl)
    try:
        with httpx.stream("POST", f"{url}/v1/completions", timeout=30,
                          json={"model": "solo", "prompt": "drain me", "max_tokens": 300, "stream": True}) as r:
            lines = r.iter_lines()
            next(lines)
            router_proc.send_signal(signal.SIGTERM)  # 300 tokens at 5 ms: 1.5 s still to go
            rest = [line for line in lines if line.startswith("data:")]
        assert len(rest) == 299  # every token arrived
        assert router_proc.wait(10) in (0, -15)
        with pytest.raises(httpx.ConnectError):  # and it no longer takes new requests
            httpx.get(f"{url}/health")
    finally:
        stop(router_proc, 10, signal.SIGKILL)
        stop(backend, 10)


def test_an_upstream_that_dies_mid_stream_ends_it_with_an_error_event(tmp_path):
    import json

    backend, burl = own_backend()
    router_proc, url = own_router(tmp_path, burl)
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=30,
                          json={"model": "solo", "max_tokens": 1000, "stream": True,
                                "messages": [{"role": "user", "content": "a long one"}]}) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data:")
            backend.kill()
            events = [line for line in lines if line.startswith("data:")]
        last = json.loads(events[-1][5:])
        assert last["error"]["code"] == "upstream_broke_off", events[-3:]
    finally:
        stop(router_proc, 10)
        stop(backend, 10, signal.SIGKILL)


def test_the_series_of_an_endpoint_that_is_gone_are_dropped():
    from prometheus_client import generate_latest

    from modelship.router import balance
    from modelship.router.metrics import Metrics
    from modelship.router.registry import Registry, Target

    reg, t = Registry(), Target("chat", "llamacpp")
    t.set_endpoints({"http://a": True, "http://b": True})
    reg.put(t)
    m = Metrics(reg)
    m.child(m.requests, "chat", "http://a", "200").inc()
    m.child(m.requests, "chat", "http://b", "200").inc()
    m.child(m.requests, "chat", "", "499").inc()  # no endpoint: kept
    t.endpoints["http://a"].in_flight = 2
    t.strategy.served(t.strategy.key("x" * 1000, 1000, 0), t.endpoints["http://b"])
    text = generate_latest(m.registry).decode()
    assert 'modelship_router_in_flight_requests{endpoint="http://a",model="chat"} 2.0' in text
    assert 'modelship_router_prefix_blocks_total{model="chat"} 7.0' in text  # read from the strategy
    t.set_endpoints({"http://b": True})  # a is gone
    m.prune({("chat", "http://b")})
    text = generate_latest(m.registry).decode()
    assert 'endpoint="http://b"' in text and 'code="499"' in text
    assert 'endpoint="http://a"' not in text


def test_api_keys_follow_the_mounted_file(tmp_path):
    """A rotated Secret applies without a restart; a broken file keeps the keys there were."""
    import asyncio
    import os

    from modelship.router.settings import Limits
    from modelship.router.server import build

    static = tmp_path / "static.yaml"
    static.write_text(yaml.safe_dump({"models": [{"name": "m", "engine": "tgi", "endpoints": ["http://127.0.0.1:9"]}]}))
    keys = tmp_path / "keys"
    keys.write_text("old-key\n")
    app = build(str(static), Limits(), ["old-key"], scrape_interval=0, api_keys_file=str(keys), keys_interval=0.05)

    def swap(text: str) -> None:  # as the kubelet does: a new file put in place at once
        (tmp_path / "next").write_text(text)
        os.replace(tmp_path / "next", keys)

    async def go() -> list[int]:
        for start in app.on_startup:
            start(asyncio.get_running_loop())
        codes = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://router") as c:
            async def status(key: str) -> int:
                return (await c.get("/v1/models", headers={"authorization": f"Bearer {key}"})).status_code

            codes += [await status("old-key"), await status("new-key")]
            swap("# rotated\nnew-key\n")
            await asyncio.sleep(0.3)
            codes += [await status("old-key"), await status("new-key")]
            swap("\n")  # no key at all: refused, the new key stays
            await asyncio.sleep(0.3)
            codes += [await status("new-key")]
        for task in app.background:
            task.cancel()
        return codes

    assert asyncio.run(go()) == [200, 401, 401, 200, 200]


def test_two_router_replicas_send_every_turn_of_a_conversation_to_one_engine(backends, tmp_path):
    """Two `prefix-cache` routers that share nothing, each turn sent to the other one (as new
    connections through a Service are spread): every conversation stays on one engine."""
    path = tmp_path / "static.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "tiny", "engine": "tgi", "endpoints": backends,
                                                "strategy": "prefix-cache"}]}))
    procs, urls = [], []
    try:
        for _ in range(2):
            port = free_port()
            urls.append(f"http://{HOST}:{port}")
            procs.append(start([str(Path(sys.executable).with_name("modelship")), "router", "--static", str(path),
                                "--host", HOST, "--port", str(port)], f"{urls[-1]}/health", "router"))
        engines: dict[int, list[int]] = {}
        for cid in range(12):
            messages = [{"role": "system", "content": "You answer questions about documents."},
                        {"role": "user", "content": f"Document {cid}: " + "words of the document " * 40}]
            for turn in range(4):
                before = counts(backends)
                r = httpx.post(f"{urls[turn % 2]}/v1/chat/completions", timeout=30,
                               json={"model": "tiny", "messages": messages, "max_tokens": 3})
                r.raise_for_status()
                served = [i for i, (a, b) in enumerate(zip(before, counts(backends))) if b > a]
                assert len(served) == 1
                engines.setdefault(cid, []).append(served[0])
                messages += [{"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]},
                             {"role": "user", "content": f"question {turn}?"}]
        assert all(len(set(e)) == 1 for e in engines.values()), engines
        assert len({e[0] for e in engines.values()}) >= 2  # and the conversations are spread
    finally:
        for p in procs:
            stop(p, 20)


def test_a_stderr_nobody_reads_stops_no_request_and_not_the_exit(backends, tmp_path):
    """The access log (a line a request) fills a pipe's 64 KiB in a few hundred requests. The
    router's stderr here is a pipe never read until it has exited: every request is still
    answered, and SIGTERM still stops it (its log goes by a thread of its own)."""
    import concurrent.futures

    path = tmp_path / "static.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "tiny", "engine": "tgi", "endpoints": backends}]}))
    port = free_port()
    url = f"http://{HOST}:{port}"
    proc = start([str(Path(sys.executable).with_name("modelship")), "router", "--static", str(path), "--host", HOST,
                  "--port", str(port)], f"{url}/health", "router", drained=False)
    try:
        def one(i: int) -> int:
            return httpx.post(f"{url}/v1/completions", timeout=10,
                              json={"model": "tiny", "prompt": f"request {i}", "max_tokens": 1}).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(one, range(600))) == [200] * 600
        time.sleep(1)  # (the last lines handed over: the writer is blocked on the full pipe)
        assert "modelship_router_access_log_dropped_lines_total 0.0" in httpx.get(f"{url}/metrics").text
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
        assert code in (0, -15) and time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = proc.said()
    assert said.count('"path":"/v1/completions"') >= 150 and "Traceback" not in said  # (a pipe's worth at least)

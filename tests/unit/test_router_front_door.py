"""The router as the front door: fallback models when a model fails before its first byte,
callers with names, allowed models and limits (OpenAI's 429 and x-ratelimit-* headers, which
the real `openai` client reads), requests checked before any engine sees them, TGI's
generation defaults, usage counted from the answers, the request id and the access log.

The router is served in this process (uvicorn on the test's loop, real HTTP on loopback) in
front of one fake TGI and of small failing engines; the limits shared by two router
replicas are tested with two `modelship router` processes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from modelship_testbed.procs import stop

from .test_router import HOST, error, free_port, start
from .test_router_hold import engine, serving  # noqa: F401 (engine: a fixture, one fake TGI)

HI = [{"role": "user", "content": "hi"}]


def answering(status: int, body: bytes, content_type: bytes = b"application/json", then_break: bool = False,
              length: int | None = None):
    """An engine that answers every request with this status and body (`then_break`: a stream
    that breaks off after its first event); it counts what it was asked."""
    seen = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append(scope["path"])
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", content_type)]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if then_break:
            await send({"type": "http.response.body", "body": body, "more_body": True})
            raise ConnectionResetError("the engine died mid-answer")
        await send({"type": "http.response.body", "body": body})

    app.seen = seen
    return app


def router(*targets, keys=None, **settings):
    from modelship.router.app import Router
    from modelship.router.registry import Registry
    from modelship.router.server import configure, upstream_client
    from modelship.router.settings import RouterSettings

    reg = Registry()
    for t in targets:
        reg.put(t)
    s = RouterSettings(**settings)
    app = Router(reg, upstream_client(s), s, keys)
    configure(app, s)
    return app


def target(name: str, *urls: str, **kw):
    from modelship.router.registry import Target

    t = Target(name, "tgi", **kw)
    t.set_endpoints({u: True for u in urls})
    return t


def dead() -> str:
    return f"http://{HOST}:{free_port()}"  # nothing listens there: connection refused


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.split()[-1])
    return 0.0


# --- fallback ---------------------------------------------------------------------------


def test_a_model_that_fails_before_its_first_byte_falls_back_in_order_each_with_its_own_retries(engine):
    from openai import AsyncOpenAI

    busy, broken = answering(503, b'{"error":"Model is overloaded"}'), answering(500, b'{"error":"CUDA OOM"}')

    async def go():
        async with serving(busy) as b, serving(broken) as c:
            app = router(target("a", dead(), b, fallback=["b", "c"]), target("b", c, fallback=["a", "c"]),
                         target("c", engine))
            async with serving(app) as url, httpx.AsyncClient() as c:
                client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
                r = await client.chat.completions.with_raw_response.create(model="a", messages=HI, max_tokens=3)
                metrics = (await c.get(f"{url}/metrics")).text
                return r, metrics

    r, metrics = asyncio.run(go())
    assert r.http_response.status_code == 200 and r.parse().usage.completion_tokens == 3
    assert r.headers["x-modelship-model"] == "c"  # which model answered
    assert busy.seen == ["/v1/chat/completions"] and broken.seen == ["/v1/chat/completions"]  # each tried once
    # Counted once, for the fallback that answered, with why the one before it did not (b's 500).
    assert metric(metrics, "modelship_router_fallbacks_total", model="a", fallback="b") == 0
    assert metric(metrics, "modelship_router_fallbacks_total", model="a", fallback="c",
                  reason="upstream_error") == 1
    assert metric(metrics, "modelship_router_retries_total", model="a", reason="connect") == 1


def test_fallbacks_never_loop_and_the_last_failure_is_the_answer():
    broken = answering(500, b'{"error":{"message":"CUDA out of memory","type":"server_error"}}')

    async def go():
        async with serving(broken) as b:
            app = router(target("a", b, fallback=["b"]), target("b", b, fallback=["a"]))
            async with serving(app) as url, httpx.AsyncClient() as c:
                started = time.monotonic()
                r = await c.post(f"{url}/v1/chat/completions", json={"model": "a", "messages": HI})
                return r, time.monotonic() - started

    r, took = asyncio.run(go())
    assert r.status_code == 502 and "b answered 500: CUDA out of memory" in error(r)["message"], r.text
    assert broken.seen == ["/v1/chat/completions"] * 2 and took < 5  # a, then b, then nothing more


def test_a_whole_answer_that_breaks_off_is_tried_again_elsewhere(engine):
    """A pod killed as it answered a non-streamed request: its head came, its body broke off.
    Nothing was sent to the client yet, so another endpoint answers."""
    dying = answering(200, b'{"choices":[', then_break=True, length=400)

    async def go():
        async with serving(dying) as d:
            async with serving(router(target("a", d, engine))) as url, httpx.AsyncClient() as c:
                codes = [(await c.post(f"{url}/v1/chat/completions", json={
                    "model": "a", "max_tokens": 2, "messages": [{"role": "user", "content": f"conversation {i}"}]})
                          ).status_code for i in range(8)]  # (each its own home: some on the dying one)
                return codes, (await c.get(f"{url}/metrics")).text

    codes, metrics = asyncio.run(go())
    assert codes == [200] * 8 and len(dying.seen) >= 1
    assert metric(metrics, "modelship_router_retries_total", model="a", reason="broke_off") == len(dying.seen)


def test_a_json_answer_cut_after_its_head_is_not_passed_on_as_whole():
    """Chunked, not SSE: the client's read fails (the connection is closed), rather than a
    cut JSON body ending as if it were complete."""
    cut = answering(200, b'{"choices":[{"text":"Hel', then_break=True)

    async def go():
        async with serving(cut) as e, serving(router(target("a", e))) as url, httpx.AsyncClient() as c:
            with pytest.raises(httpx.HTTPError):
                await c.post(f"{url}/v1/completions", json={"model": "a", "prompt": "hi"})
            return (await c.get(f"{url}/health")).status_code  # and the router goes on

    assert asyncio.run(go()) == 200


def test_no_fallback_after_the_first_byte(engine):
    breaking = answering(200, b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n',
                         b"text/event-stream", then_break=True)

    async def go():
        async with serving(breaking) as b:
            app = router(target("a", b, fallback=["c"]), target("c", engine))
            async with serving(app) as url, httpx.AsyncClient() as c:
                async with c.stream("POST", f"{url}/v1/chat/completions",
                                                      json={"model": "a", "messages": HI, "stream": True}) as r:
                    text = (await r.aread()).decode()
                metrics = (await c.get(f"{url}/metrics")).text
                return r, text, metrics

    r, text, metrics = asyncio.run(go())
    assert r.headers["x-modelship-model"] == "a" and '"Hel"' in text and "upstream_broke_off" in text
    assert "modelship_router_fallbacks_total{" not in metrics


def test_an_engines_4xx_stays_and_its_5xx_is_a_502_with_its_message():
    refusing = answering(422, b'{"error":"Input validation error: inputs tokens + max_new_tokens must be <= 2048",'
                              b'"error_type":"validation"}')
    broken = answering(500, b"Internal Server Error: CUDA error")

    async def go():
        async with serving(refusing) as a, serving(broken) as b:
            app = router(target("a", a), target("b", b))
            async with serving(app) as url, httpx.AsyncClient() as c:
                return [await c.post(f"{url}/v1/chat/completions", json={"model": m, "messages": HI})
                        for m in ("a", "b")]

    four, five = asyncio.run(go())
    assert four.status_code == 422 and "must be <= 2048" in four.json()["error"]
    assert five.status_code == 502 and error(five)["message"] == "b answered 500: Internal Server Error: CUDA error"


# --- validation ---------------------------------------------------------------------------


def test_a_malformed_request_is_a_400_naming_the_field_and_no_engine_sees_it():
    from openai import AsyncOpenAI, BadRequestError

    engine = answering(200, b"{}")

    async def go():
        async with serving(engine) as e:
            async with serving(router(target("smollm2", e))) as url, httpx.AsyncClient() as c:
                client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
                out = []
                for kw in ({"messages": "hello"}, {"messages": HI, "max_tokens": -5},
                           {"messages": [{"role": "robot", "content": "hi"}]}, {"messages": HI, "temperature": 3}):
                    with pytest.raises(BadRequestError) as e:
                        await client.chat.completions.create(model="smollm2", **kw)
                    out.append(e.value.body)
                r = await c.post(f"{url}/v1/chat/completions", json={"model": "smollm2"})
                return out, r

    bodies, missing = asyncio.run(go())
    assert [b["param"] for b in bodies] == ["messages", "max_tokens", "messages[0].role", "temperature"]
    assert all(b["type"] == "invalid_request_error" for b in bodies)
    assert "must be at least 1, got -5" in bodies[1]["message"]
    assert missing.status_code == 400 and error(missing)["code"] == "missing_required_parameter"
    assert engine.seen == []


# --- callers: keys, models, limits ---------------------------------------------------------


KEYS = {"ka-secret": "team-a", "kb-secret": "team-b"}


def test_a_key_may_call_only_its_models_403_otherwise_and_lists_only_those(engine):
    from openai import AsyncOpenAI, PermissionDeniedError

    app = router(target("ns/tiny", engine, aliases=["tiny"]), target("ns/secret-model", engine, tasks=["chat"]),
                 keys=KEYS, callers={"team-a": {"models": ["tiny", "ghost"]}})

    async def go():
        async with serving(app) as url, httpx.AsyncClient() as c:
            a = AsyncOpenAI(base_url=f"{url}/v1", api_key="ka-secret", max_retries=0)
            b = AsyncOpenAI(base_url=f"{url}/v1", api_key="kb-secret", max_retries=0)
            ok = await a.chat.completions.create(model="tiny", messages=HI, max_tokens=2)
            refused = []
            for model in ("ns/secret-model", "chat", "does-not-exist"):
                with pytest.raises(PermissionDeniedError) as e:
                    await a.chat.completions.create(model=model, messages=HI)
                refused.append(e.value.body["message"])
            ghost = await c.post(f"{url}/v1/chat/completions", json={"model": "ghost", "messages": HI},
                                                   headers={"authorization": "Bearer ka-secret"})
            listed_a = [m.id async for m in a.models.list()]
            listed_b = [m.id async for m in b.models.list()]
            other = await b.chat.completions.create(model="chat", messages=HI, max_tokens=2)
            return ok, refused, ghost, listed_a, listed_b, other

    ok, refused, ghost, listed_a, listed_b, other = asyncio.run(go())
    assert ok.choices[0].message.content
    for message in refused:  # nothing said about the other models, whether they exist or not
        assert "team-a" in message and "secret" not in message.replace("'ns/secret-model'", "") and "it may call: " \
            "ns/tiny, tiny" in message, message
    assert ghost.status_code == 404 and "the models are: ns/tiny, tiny" in error(ghost)["message"]
    assert listed_a == ["ns/tiny", "tiny"] and set(listed_b) == {"ns/tiny", "tiny", "ns/secret-model", "chat"}
    assert other.choices[0].message.content


def test_over_a_limit_is_429_with_the_headers_openai_reads_and_its_retry_succeeds(engine):
    from openai import AsyncOpenAI, RateLimitError

    app = router(target("tiny", engine), keys=KEYS, callers={"team-a": {"requestsPerMinute": 20}})

    async def go():
        async with serving(app) as url, httpx.AsyncClient() as c:
            auth = {"authorization": "Bearer ka-secret"}
            first = await c.post(f"{url}/v1/completions", headers=auth, json={"model": "tiny", "prompt": "a"})
            # The burst: the bucket holds a minute's requests, and gets one back every 3 s (a
            # burst slower than that on a loaded machine would not empty it).
            for _ in range(19):
                await c.post(f"{url}/v1/completions", headers=auth, json={"model": "tiny", "prompt": "a",
                                                                           "max_tokens": 1})
            plain = AsyncOpenAI(base_url=f"{url}/v1", api_key="ka-secret", max_retries=0)
            with pytest.raises(RateLimitError) as refused:
                await plain.completions.create(model="tiny", prompt="a", max_tokens=1)
            refused_at = time.monotonic()
            patient = AsyncOpenAI(base_url=f"{url}/v1", api_key="ka-secret")  # retries twice by default
            answer = await patient.completions.with_raw_response.create(model="tiny", prompt="a", max_tokens=1)
            took = time.monotonic() - refused_at
            unlimited = await c.post(f"{url}/v1/completions", headers={"authorization": "Bearer kb-secret"},
                                     json={"model": "tiny", "prompt": "a", "max_tokens": 1})
            return first, refused.value, answer, took, unlimited, (await c.get(f"{url}/metrics")).text

    first, refused, answer, took, unlimited, metrics = asyncio.run(go())
    assert first.headers["x-ratelimit-limit-requests"] == "20" and first.headers["x-ratelimit-remaining-requests"] \
        == "19" and first.headers["x-ratelimit-reset-requests"].endswith("s")
    h = refused.response.headers
    assert refused.status_code == 429 and refused.body["code"] == "rate_limit_exceeded"
    assert h["retry-after"] in ("1", "2", "3") and 0 < int(h["retry-after-ms"]) <= 3000 and h["x-ratelimit-remaining-requests"] == "0"
    assert "requests per minute" in refused.body["message"] and "team-a" in refused.body["message"]
    # The client waited what retry-after-ms said (the time to the bucket's next request: under
    # three seconds by however long the burst took), then its retry got through: not before
    # the time the refusal named (counted from the refusal, not from the patient client's own
    # first try, whose own retry-after-ms is shorter by the time between them).
    assert answer.http_response.status_code == 200 and answer.retries_taken >= 1
    assert took >= int(h["retry-after-ms"]) / 1000 - 0.2, (took, h["retry-after-ms"])
    assert "x-ratelimit-limit-requests" not in unlimited.headers  # team-b has no limit
    assert metric(metrics, "modelship_router_rate_limited_total", caller="team-a", model="tiny") >= 2


def test_tokens_per_minute_count_the_answers_tokens_streamed_ones_too(engine):
    app = router(target("tiny", engine), model_limits={"ti*": {"tokensPerMinute": 100, "concurrentRequests": 1}})

    async def go():
        async with serving(app) as url, httpx.AsyncClient() as c:
            chat = f"{url}/v1/chat/completions"
            async with c.stream("POST", chat, json={"model": "tiny", "messages": HI, "max_tokens": 40,
                                                    "stream": True}) as r:
                concurrent = await c.post(chat, json={"model": "tiny", "messages": HI})
                await r.aread()
            after_stream = await c.post(chat, json={"model": "tiny", "messages": HI, "max_tokens": 40})
            refused = await c.post(chat, json={"model": "tiny", "messages": HI, "max_tokens": 1})
            return concurrent, after_stream, refused, (await c.get(f"{url}/metrics")).text

    concurrent, after_stream, refused, metrics = asyncio.run(go())
    assert concurrent.status_code == 429 and "concurrent" in error(concurrent)["message"]
    # The stream's 40 tokens (its events, the fake saying no usage) and its prompt's estimate
    # counted, the next request was admitted (the bucket above zero) and went over the minute's
    # 100; the one after waits for the debt to be paid back.
    assert after_stream.status_code == 200 and after_stream.json()["usage"]["completion_tokens"] == 40
    assert refused.status_code == 429 and error(refused)["type"] == "tokens"
    assert float(refused.headers["retry-after"]) >= 3 and refused.headers["x-ratelimit-limit-tokens"] == "100"
    assert metric(metrics, "modelship_router_caller_generated_tokens_total", model="tiny") == 80


# --- TGI's defaults, the request id, the access log ------------------------------------------


def test_the_router_applies_generation_defaults_for_tgi(engine):
    app = router(target("tiny", engine, defaults={"max_new_tokens": 5, "temperature": 0.5}))

    async def go():
        async with serving(app) as url, httpx.AsyncClient() as c:
            return [await c.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": HI}),
                    await c.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": HI,
                                                                      "max_tokens": 2}),
                    await c.post(f"{url}/models/tiny/generate", json={"inputs": "hi",
                                                                      "parameters": {"details": True}})]

    default, own, native = asyncio.run(go())
    assert default.json()["usage"]["completion_tokens"] == 5 and own.json()["usage"]["completion_tokens"] == 2
    assert native.json()["details"]["generated_tokens"] == 5


def test_every_request_has_an_id_and_one_access_log_line_without_prompt_or_key(engine):
    from modelship.router.accesslog import AccessLog

    app = router(target("tiny", engine), keys=KEYS)
    written: list[bytes] = []
    app.access = AccessLog(sink=written.append)

    async def go():
        async with serving(app) as url, httpx.AsyncClient() as c:
            auth = {"authorization": "Bearer ka-secret"}
            given = await c.post(f"{url}/v1/chat/completions", headers={**auth, "x-request-id": "req-42"},
                                 json={"model": "tiny", "messages": [{"role": "user", "content": "my secret prompt"}],
                                       "max_tokens": 2})
            made = await c.post(f"{url}/v1/chat/completions", headers=auth, json={"model": "nope", "messages": HI})
            return given, made

    given, made = asyncio.run(go())
    app.access.flush()
    assert given.headers["x-request-id"] == "req-42" and given.headers["x-modelship-model"] == "tiny"
    assert len(made.headers["x-request-id"]) == 24 and made.status_code == 404
    text = b"".join(written)
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["id"] == "req-42" and first["caller"] == "team-a" and first["model"] == "tiny"
    assert first["status"] == 200 and first["endpoint"] == engine and first["completionTokens"] == 2
    assert first["ttfb"] > 0 and first["duration"] >= first["ttfb"] and first["promptTokens"] > 0
    assert lines[1]["status"] == 404 and lines[1]["id"] == made.headers["x-request-id"]
    assert b"secret prompt" not in text and b"ka-secret" not in text


# --- two router replicas, one limit -------------------------------------------------------------


def _routers(tmp_path: Path, engine: str, share: bool) -> tuple[list, list[str]]:
    ports = [free_port(), free_port()]
    urls = [f"http://{HOST}:{p}" for p in ports]
    static = tmp_path / "static.yaml"
    static.write_text(yaml.safe_dump({"models": [{"name": "tiny", "engine": "tgi", "endpoints": [engine]}]}))
    procs = []
    for i, port in enumerate(ports):
        config = tmp_path / f"router-{i}.yaml"
        config.write_text(yaml.safe_dump({"defaultCaller": {"requestsPerMinute": 30}, "peerInterval": 0.5,
                                          "peers": [urls[1 - i]] if share else [], "accessLog": False}))
        procs.append(start([str(Path(sys.executable).with_name("modelship")), "router", "--config", str(config),
                            "--static", str(static), "--host", HOST, "--port", str(port), "--scrape-interval", "0"],
                           f"{urls[i]}/health", "router"))
    return procs, urls


@pytest.mark.parametrize("share", [True, False], ids=["shared", "not-shared"])
def test_two_router_replicas_hold_one_limit(engine, tmp_path, share):
    """30 requests a minute (a burst of 30, then one every 2 s), asked of two replicas for 12 s
    at 8 requests a second, every other request to each: one shared bucket admits 30 + 6.
    Without the exchange, each replica admits that much."""
    procs, urls = _routers(tmp_path, engine, share)
    try:
        admitted, i, started = 0, 0, time.monotonic()
        with httpx.Client() as c:
            while time.monotonic() - started < 12:
                r = c.post(f"{urls[i % 2]}/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1})
                assert r.status_code in (200, 429), r.text
                admitted += r.status_code == 200
                i += 1
                time.sleep(max(0.0, started + i / 8 - time.monotonic()))
        took = time.monotonic() - started
    finally:
        for p in procs:
            stop(p, 10)
    ideal = 30 + took / 2
    error_ = (admitted - ideal) / ideal
    print(f"two replicas, {'shared' if share else 'not shared'}: {admitted} admitted of {i} in {took:.1f} s; "
          f"one bucket: {ideal:.1f}; error {error_:+.1%}")
    if share:
        assert abs(error_) <= 0.12, (admitted, ideal)
    else:
        assert error_ > 0.5, (admitted, ideal)  # the control: the exchange is what holds the limit


# --- what a review found: names, caches, fallbacks' own limits and engines, the keys file ----


def test_a_task_goes_to_a_model_the_caller_may_call_and_an_alias_removed_takes_the_right_away(engine):
    small = target("team-a/small", engine, tasks=["chat"])
    big = target("team-b/big", engine, engine, tasks=["chat"])  # more ready endpoints: chosen without a policy
    app = router(small, big, keys=KEYS, callers={"team-a": {"models": ["team-a/*", "gpt-4o"]}})

    async def go():
        async with serving(app) as url, httpx.AsyncClient(headers={"authorization": "Bearer ka-secret"}) as c:
            chat = await c.post(f"{url}/v1/chat/completions", json={"model": "chat", "messages": HI, "max_tokens": 1})
            listed = [m["id"] for m in (await c.get(f"{url}/v1/models")).json()["data"]]
            big.aliases = ["gpt-4o"]  # as discovery does, in place
            aliased = await c.post(f"{url}/v1/chat/completions", json={"model": "gpt-4o", "messages": HI,
                                                                       "max_tokens": 1})
            big.aliases = []
            removed = await c.post(f"{url}/v1/chat/completions", json={"model": "team-b/big", "messages": HI})
            return chat, listed, aliased, removed

    chat, listed, aliased, removed = asyncio.run(go())
    assert chat.status_code == 200 and chat.headers["x-modelship-model"] == "team-a/small"
    assert "chat" in listed and "team-b/big" not in listed
    assert aliased.status_code == 200 and aliased.headers["x-modelship-model"] == "team-b/big"
    assert removed.status_code == 403


def test_a_fallback_answers_within_its_own_model_limits_and_only_on_an_api_it_has(engine):
    from modelship.router.registry import Target

    llama = Target("l", "llamacpp")
    llama.set_endpoints({engine: True})  # (a TGI fake: what matters is the engine the router thinks it is)
    app = router(target("a", dead(), fallback=["big"]), target("big", engine),
                 target("t", dead(), fallback=["l"]), llama, model_limits={"big": {"requestsPerMinute": 2}})

    async def go():
        async with serving(app) as url, httpx.AsyncClient() as c:
            codes = [(await c.post(f"{url}/v1/chat/completions", json={"model": "a", "messages": HI,
                                                                        "max_tokens": 1})).status_code
                     for _ in range(4)]
            native = await c.post(f"{url}/models/t/generate", json={"inputs": "hi"})
            return codes, native, (await c.get(f"{url}/metrics")).text

    codes, native, metrics = asyncio.run(go())
    assert codes == [200, 200, 429, 429], codes  # big's two a minute, then its limit (the last failure)
    assert metric(metrics, "modelship_router_rate_limited_total", model="big", limit="requests") == 2
    assert native.status_code == 502 and "could not reach t" in error(native)["message"]  # l has no TGI API


def test_a_keys_file_that_is_not_valid_yaml_is_refused_not_read_as_keys(tmp_path):
    from modelship.router.callers import read_keys

    path = tmp_path / "keys"
    path.write_text("team-a: sk-a\nteam-b: [sk-b1, sk-b2\n")
    with pytest.raises(ValueError, match="not a YAML mapping"):
        read_keys(str(path))
    path.write_text("- sk-a\n- sk-b\n")
    with pytest.raises(ValueError, match="mapping of caller names"):
        read_keys(str(path))
    path.write_text("# two plain keys\nsk-a\nsk-b\n")
    assert set(read_keys(str(path))) == {"sk-a", "sk-b"}
    path.write_text("team-a: sk-a\nteam-b: [sk-b1, sk-b2]\n")
    assert read_keys(str(path)) == {"sk-a": "team-a", "sk-b1": "team-b", "sk-b2": "team-b"}


@pytest.mark.parametrize("body, prompt, generated", [
    (b'{"choices":[],"usage":{"prompt_tokens":14,"completion_tokens":8,"total_tokens":22}}', 14, 8),
    (b'{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}', 3, 5),  # spaces (Python servers)
    (b'{"usage":{"prompt_tokens":3,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":2}}}', 3, 5),
    (b'[{"generated_text":"a","details":{"generated_tokens":4}},{"generated_text":"b","details":'
     b'{"generated_tokens":6}}]', -1, 10),  # TGI's POST / answers a list
    (b'{"generated_text":"hi"}', -1, -1),
], ids=["compact", "spaced", "nested-details", "tgi-list", "none"])
def test_the_usage_of_a_whole_answer(body, prompt, generated):
    from modelship.router import usage
    from modelship.router.exchange import Call

    call = Call(b"x", "", 0.0)
    usage.whole(call, body)
    assert (call.prompt_tokens, call.completion_tokens) == (prompt, generated)


def test_a_model_at_zero_whose_fallback_is_over_its_limit_is_held_and_pays_nothing_for_its_fallback(engine):
    from modelship.router.registry import Target

    sleepy = Target("m", "tgi", wakeable=True, fallback=["f"])
    app = router(sleepy, target("f", engine), model_limits={"f": {"requestsPerMinute": 1},
                                                             "m": {"tokensPerMinute": 1000}})

    async def go():
        async with serving(app) as url, httpx.AsyncClient(timeout=10) as c:
            chat = {"model": "m", "messages": HI, "max_tokens": 5}
            first = await c.post(f"{url}/v1/chat/completions", json=chat)
            asyncio.get_running_loop().call_later(0.5, sleepy.set_endpoints, {engine: True})  # as discovery does
            second = await c.post(f"{url}/v1/chat/completions", json=chat)
            return first, second

    first, second = asyncio.run(go())
    assert first.status_code == 200 and first.headers["x-modelship-model"] == "f"
    assert second.status_code == 200 and second.headers["x-modelship-model"] == "m"  # held, not f's 429
    m = app.quotas.models["m"]
    assert m.tokens_total == second.json()["usage"]["total_tokens"]  # f's tokens are f's, not m's

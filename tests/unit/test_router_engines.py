"""vLLM and SGLang targets beside TGI and llama.cpp: the engine table, discovery, the static
file, the scraper on the engines' own metrics pages (canned: tests/unit/engine_pages.py),
queue-aware's pick, the engines' error shapes, generation defaults left to the engines, the
usage they report, and the TGI-native routes refused with the engine's name."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from .engine_pages import sglang_page, vllm_page
from .test_router import HI, app_with, call, error

# --- the scraper ------------------------------------------------------------------------------


def test_scrape_reads_vllm_running_waiting_and_kv_usage():
    from modelship.router.scrape import Load, parse

    page = vllm_page(running=3, waiting=2, kv=0.42)
    assert len(page.splitlines()) > 200  # (a real page's size: histograms mostly)
    assert parse(page, "vllm") == Load(3.0, 2.0, 0.42)
    assert parse(page) == Load(3.0, 2.0, 0.42)  # (the engine not known: every engine's names)
    # Releases before the rename say vllm:gpu_cache_usage_perc; data-parallel engines a series each.
    assert parse(vllm_page(running=1, waiting=2, kv=0.5, engines=2, legacy=True), "vllm") == Load(2.0, 4.0, 0.5)


def test_scrape_reads_sglang_running_queued_and_token_usage():
    from modelship.router.scrape import Load, parse

    assert parse(sglang_page(running=4, waiting=1, usage=0.3), "sglang") == Load(4.0, 1.0, 0.3)
    two = sglang_page(running=4, waiting=1, usage=0.2, ranks=2)  # two DP ranks: counts summed, usage their mean
    assert parse(two, "sglang") == Load(8.0, 2.0, pytest.approx(0.2))


def test_scrape_reads_labels_with_spaces_braces_and_quotes_and_timestamps():
    from modelship.router.scrape import Load, parse

    page = ('# HELP vllm:num_requests_running Number of requests in model execution batches.\n'
            'vllm:num_requests_running{model_name="my model {v2} \\"q\\"",engine="0"} 7 1700000000000\n'
            'vllm:num_requests_waiting\t2.5e0\n'
            'vllm:num_requests_waiting_by_reason{reason="capacity"} 9\n'  # a name that starts alike
            'x_vllm:num_requests_waiting 5\n'  # the name inside another line
            'vllm:kv_cache_usage_perc{model_name="m"} NaN\n')  # a NaN says nothing
    assert parse(page, "vllm") == Load(7.0, 2.5, None)
    assert parse("vllm:num_requests_running{model_name=\"m\"} 1", "vllm") == Load(1.0, 0.0, None)  # no newline


def test_scrape_falls_back_to_every_engines_names_when_the_target_names_another():
    from modelship.router.scrape import Load, parse

    # A static file that says llamacpp in front of a TGI: its load is read all the same.
    assert parse("tgi_batch_current_size 5\ntgi_queue_size 1\n", "llamacpp") == Load(5.0, 1.0, None)
    assert parse("process_cpu_seconds_total 1\n", "vllm") is None


def test_kv_usage_is_scraped_and_smoothed_like_the_counts():
    from modelship.router.registry import Registry, Target
    from modelship.router.scrape import SMOOTHING, scrape_once

    pages = iter([vllm_page(2, 0, 0.8), vllm_page(2, 0, 0.0), "tgi_queue_size 0\n"])

    class Pages:
        async def get(self, url, timeout):
            return 200, next(pages).encode()

    reg, t = Registry(), Target("m", "vllm")
    t.set_endpoints({"http://127.0.0.1:1": True})
    reg.put(t)
    e = t.endpoints["http://127.0.0.1:1"]
    asyncio.run(scrape_once(reg, Pages()))
    assert (e.running, e.waiting, e.kv_usage) == (2.0, 0.0, 0.8)
    asyncio.run(scrape_once(reg, Pages()))
    assert e.kv_usage == pytest.approx(0.8 * (1 - SMOOTHING))
    asyncio.run(scrape_once(reg, Pages()))  # a page without it: not known any more
    assert e.kv_usage is None


def test_queue_aware_counts_kv_usage_at_its_weight():
    from modelship.router.balance import Endpoint, LeastLoad, make

    a, b = Endpoint("http://a"), Endpoint("http://b")
    a.running = b.running = 2.0
    a.kv_usage, b.kv_usage = 0.9, 0.1
    with_kv = LeastLoad(seed=1, queue_aware=True, kv_weight=1.0)
    assert {with_kv.pick(None, [a, b]).url for _ in range(20)} == {"http://b"}
    without = LeastLoad(seed=1, queue_aware=True, kv_weight=0.0)
    assert {without.pick(None, [a, b]).url for _ in range(40)} == {"http://a", "http://b"}  # a tie
    b.running = 3.0  # a whole request more outweighs the KV difference at weight 1
    assert {with_kv.pick(None, [a, b]).url for _ in range(20)} == {"http://a"}
    assert make("least-load", kv_weight=1.0).kv_weight == 0.0  # least-load reads no engine figure


# --- discovery and the static file ------------------------------------------------------------


def md(engine_type: str | None = None, resolved: str | None = None) -> dict:
    obj = {"metadata": {"namespace": "ns", "name": "m"}, "spec": {}}
    if engine_type:
        obj["spec"]["engine"] = {"type": engine_type}
    if resolved:
        obj["status"] = {"resolved": {"engine": resolved}}
    return obj


@pytest.mark.parametrize("engine_type, resolved, expected", [
    ("auto", "vllm", "vllm"), ("auto", "sglang", "sglang"), (None, "tgi", "tgi"),
    ("vllm", None, "vllm"), ("sglang", None, "sglang"), ("llamacpp", None, "llamacpp"), ("tgi", None, "tgi"),
    ("auto", None, ""), (None, None, ""),  # not resolved yet: not known (not llama.cpp)
])
def test_discovery_reads_the_resolved_engine_else_the_one_asked_for(engine_type, resolved, expected):
    from modelship.router.discovery import Discovered

    assert Discovered.from_object(md(engine_type, resolved)).engine == expected


def test_the_static_file_takes_every_engine_and_refuses_others(tmp_path):
    from pydantic import ValidationError

    from modelship.router.registry import load_static

    path = tmp_path / "static.yaml"
    path.write_text("models:\n- {name: a, engine: vllm, endpoints: ['http://x:1']}\n"
                    "- {name: b, engine: sglang, endpoints: ['http://x:2'], strategy: queue-aware, kvWeight: 2}\n")
    reg = load_static(path)
    assert (reg.targets["a"].engine, reg.targets["b"].engine) == ("vllm", "sglang")
    assert reg.targets["b"].strategy.kv_weight == 2.0
    path.write_text("models:\n- {name: a, engine: tensorrt, endpoints: ['http://x:1']}\n")
    with pytest.raises(ValidationError, match="'tgi', 'vllm', 'sglang' or 'llamacpp'"):
        load_static(path)


# --- errors, defaults, usage ------------------------------------------------------------------


@pytest.mark.parametrize("body, expected", [
    # vLLM since v0.10.2: nested, `code` the HTTP status
    ({"error": {"message": "boom", "type": "InternalServerError", "param": None, "code": 500}},
     {"message": "boom", "type": "InternalServerError", "param": None, "code": 500}),
    # older vLLM, SGLang: flat
    ({"object": "error", "message": "boom", "type": "InternalServerError", "param": None, "code": 500},
     {"message": "boom", "type": "InternalServerError", "param": None, "code": 500}),
    # TGI's own routes
    ({"error": "boom", "error_type": "generation"},
     {"message": "m answered 500: boom", "type": "upstream_error", "param": None, "code": "generation"}),
])
def test_engine_errors_are_read_in_every_engines_shape(body, expected):
    from modelship.router.forward import _engine_error, _nested_error

    assert _engine_error("m", 500, orjson.dumps(body)) == expected
    if body.get("object") == "error":
        assert orjson.loads(_nested_error(orjson.dumps(body))) == {"error": expected}


def test_generation_defaults_are_applied_where_the_engine_would_not():
    """vLLM and llama.cpp are started with the model's generation defaults: the router sends
    their bodies byte for byte as the client did. TGI has none, and SGLang's OpenAI routes fill
    every sampling field themselves before its --preferred-sampling-params could apply: the
    router fills them in (top_k too on SGLang, whose OpenAI routes take it; 0, off, as -1)."""
    from modelship.router.exchange import Exchange
    from modelship.router.registry import Target

    raw = b'{"model": "m",  "messages": [{"role": "user", "content": "hi"}]}'  # (spacing kept)

    async def shaped(engine: str, defaults: dict) -> bytes:
        t = Target("m", engine, defaults=defaults)
        ex = Exchange(t, t, "/v1/chat/completions", raw, orjson.loads(raw), "chat", None, None)
        ex.shape(t)
        return ex.raw

    given = {"temperature": 0.2, "max_new_tokens": 64, "top_k": 20}
    for name in ("vllm", "llamacpp"):
        assert asyncio.run(shaped(name, given)) is raw, name
    assert orjson.loads(asyncio.run(shaped("tgi", given))) == {**orjson.loads(raw), "temperature": 0.2,
                                                               "max_tokens": 64}
    assert orjson.loads(asyncio.run(shaped("sglang", given))) == {**orjson.loads(raw), "temperature": 0.2,
                                                                  "max_tokens": 64, "top_k": 20}
    assert orjson.loads(asyncio.run(shaped("sglang", {"top_k": 0})))["top_k"] == -1


def test_vllm_and_sglang_are_asked_by_their_served_name_whatever_name_the_request_used():
    """vLLM answers 404 for a `model` that is not its --served-model-name, and SGLang reads a
    ':' in it as a LoRA adapter's name (400 without LoRA): a request by alias (qwen2.5:7b),
    task or `namespace/name`, or one a fallback answers, is sent with the served name."""
    from modelship.router.exchange import Exchange
    from modelship.router.registry import Target

    async def sent(target: Target, model: str, kind: str = "chat") -> bytes:
        raw = orjson.dumps({"model": model, "messages": HI})
        ex = Exchange(target, target, "/v1/chat/completions", raw, orjson.loads(raw), kind, None, None)
        ex.shape(target)
        return ex.raw

    vllm = Target("ns/m", "vllm", served="m")
    assert orjson.loads(asyncio.run(sent(vllm, "chat")))["model"] == "m"
    assert orjson.loads(asyncio.run(sent(vllm, "ns/m")))["model"] == "m"
    same = orjson.dumps({"model": "m", "messages": HI})
    assert asyncio.run(sent(vllm, "m")) == same and vllm.served_as_named
    assert orjson.loads(asyncio.run(sent(Target("m2", "vllm"), "alias")))["model"] == "m2"  # (static: its name)
    sglang = Target("ns/m", "sglang", served="m")
    assert sglang.served_as_named and orjson.loads(asyncio.run(sent(sglang, "qwen2.5:7b")))["model"] == "m"
    assert asyncio.run(sent(sglang, "m")) == same
    for other in ("tgi", "llamacpp"):  # they serve any name
        assert orjson.loads(asyncio.run(sent(Target("ns/m", other, served="m"), "chat")))["model"] == "chat"


@pytest.mark.parametrize("engine", ["tgi", "vllm", "sglang", "llamacpp"])
def test_a_request_without_a_limit_reserves_the_models_max_new_tokens_whichever_engine_applies_it(engine):
    """The tokens taken from the limits at admission: the prompt's estimate and the answer's
    most, the request's max_tokens, else the model's maxNewTokens (the router applies it to
    TGI and SGLang; vLLM and llama.cpp are started with it: the answer is as long)."""
    from modelship.router import usage
    from modelship.router.errors import ErrorAnswer
    from modelship.router.exchange import Exchange
    from modelship.router.registry import Target

    target = Target("m", engine, defaults={"max_new_tokens": 500})
    app, taken = app_with([target]), []

    def admit(caller, model, started, tokens):
        taken.append(tokens)
        e = ErrorAnswer(429, "stop here")
        e.limit = "tokens"
        raise e

    async def sent(raw: bytes, body: dict) -> bytes:  # the bytes sent: the router's defaults count in the estimate
        ex = Exchange(target, target, "/v1/chat/completions", raw, body, "chat", None, None)
        ex.shape(target)
        return ex.raw

    app.quotas.admit = admit
    expected = []
    for body, most in (({"model": "m", "messages": HI}, 500), ({"model": "m", "messages": HI, "max_tokens": 7}, 7)):
        raw = orjson.dumps(body)
        r = call(app, "POST", "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 429
        expected.append(usage.estimate("chat", body, len(asyncio.run(sent(raw, body))))[0] + most)
    assert taken == expected and expected[0] > 500


def test_usage_of_vllm_and_sglang_answers():
    from modelship.router import usage
    from modelship.router.exchange import Call

    whole = (b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",'
             b'"content":"a b"},"finish_reason":"length"}],"usage":{"prompt_tokens":9,"total_tokens":11,'
             b'"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":8}},"prompt_logprobs":null,'
             b'"kv_transfer_params":null}')
    c = Call(b"", "", 0.0)
    usage.whole(c, whole)
    assert (c.prompt_tokens, c.completion_tokens) == (9, 2)
    chunks = [b'data: {"id":"1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}\n\n',
              b'data: {"id":"1","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n',
              b'data: {"id":"1","choices":[{"index":0,"delta":{"content":" b"},"finish_reason":"length"}]}\n\n',
              b'data: {"id":"1","choices":[],"usage":{"prompt_tokens":9,"total_tokens":11,"completion_tokens":2}}'
              b'\n\ndata: [DONE]\n\n']
    said = [ch for ch in chunks if usage.says_usage(ch)]
    assert said == [chunks[-1]]  # (`"usage": null` says nothing)
    c = Call(b"", "", 0.0)
    usage.streamed(c, said[-1], sum(ch.count(b"data:") for ch in chunks), chunks[-1])
    assert (c.prompt_tokens, c.completion_tokens) == (9, 2)
    c = Call(b"", "", 0.0)  # not asked for: the events, [DONE] and the usage event aside
    usage.streamed(c, b"", 3 + 1, b"data: [DONE]\n\n")
    assert c.completion_tokens == 3


# --- the TGI-native routes --------------------------------------------------------------------


@pytest.mark.parametrize("engine, shown", [("vllm", "vLLM"), ("sglang", "SGLang"), ("llamacpp", "llama.cpp"),
                                           ("", "an engine not known yet (its ModelDeployment is not resolved)")])
def test_tgi_routes_on_other_engines_are_400_naming_the_engine(engine, shown):
    from modelship.router.registry import Target

    t = Target("m", engine)
    t.set_endpoints({"http://127.0.0.1:9": True})
    app = app_with([t])
    for method, path, body in (("POST", "/models/m/generate", {"inputs": "hi"}), ("GET", "/models/m/info", None)):
        r = call(app, method, path, json=body)
        assert r.status_code == 400 and error(r) == {
            "message": f"model 'm' is served by {shown}, which has no TGI API: use the OpenAI API "
                       f"(/v1/chat/completions, /v1/completions)",
            "type": "invalid_request_error", "param": None, "code": "unsupported_api"}


def test_a_tgi_route_never_falls_back_to_a_vllm_target():
    from modelship.router.registry import Target

    tgi, other = Target("m", "tgi", fallback=["v"]), Target("v", "vllm")
    tgi.set_endpoints({"http://127.0.0.1:9": False})  # none ready: its fallbacks would be tried
    other.set_endpoints({"http://127.0.0.1:9": True})
    r = call(app_with([tgi, other]), "POST", "/models/m/generate", json={"inputs": "hi"})
    assert r.status_code == 503 and error(r)["code"] == "no_ready_endpoint"
    r = call(app_with([tgi, other]), "POST", "/v1/chat/completions", json={"model": "m", "messages": HI})
    assert r.status_code == 502 and "v at http://127.0.0.1:9" in error(r)["message"]  # (the OpenAI route: it is)


def test_the_openapi_document_names_the_engines():
    from modelship.router.openapi import document

    doc = document()
    assert "TGI, vLLM, SGLang, llama.cpp" in doc["info"]["description"]
    name = doc["paths"]["/models/{name}/generate"]["post"]["parameters"][0]["description"]
    assert name == ("the ModelDeployment (or alias) served by TGI (one served by vLLM, SGLang, llama.cpp: 400 "
                    "`unsupported_api`, it has the OpenAI routes only)")


def test_discovered_vllm_targets_are_asked_by_the_modeldeployments_name():
    from modelship.router.discovery import State
    from modelship.router.registry import Registry

    s, reg = State(), Registry()
    s.on_model("ADDED", {"metadata": {"namespace": "a", "name": "chat"}, "spec": {"router": {"aliases": ["gpt"]}},
                         "status": {"resolved": {"engine": "vllm"}}})
    s.apply(reg)
    t = reg.lookup("gpt")
    assert (t.name, t.engine, t.served, t.served_as_named) == ("a/chat", "vllm", "chat", True)

"""`modelship router` as a process in front of the test bed's vLLM and SGLang fakes
(modelship_testbed.engine_fake: their real protocols, errors and metrics), with the real
`openai` client: chat, streams with usage, errors, the TGI-native routes refused, and
queue-aware reading each engine's own load."""

from __future__ import annotations

import asyncio
import sys

import httpx
import pytest
from modelship_testbed.procs import stop

from .test_router import HI, HOST, error, free_port, start, static_router

ENGINES = {  # engine -> (fake's argv for a served name and a port, the OpenAI error shape it sends)
    "vllm": lambda name, port: [sys.executable, "-m", "modelship_testbed.engine_fake.vllm", "serve", "org/tiny",
                                "--served-model-name", name, "--max-model-len", "256"],
    "sglang": lambda name, port: [sys.executable, "-m", "modelship_testbed.engine_fake.sglang", "--model-path",
                                  "org/tiny", "--served-model-name", name, "--context-length", "256",
                                  "--enable-metrics"],
}


@pytest.fixture(scope="module")
def fakes():
    """Two fakes of each engine, serving "vm" (vLLM) and "sg" (SGLang); KV caches of 64 blocks,
    so that one request's use shows (SGLang rounds it to two places)."""
    procs, urls = [], {"vllm": [], "sglang": []}
    try:
        for engine, name in (("vllm", "vm"), ("sglang", "sg")):
            for _ in range(2):
                port = free_port()
                argv = ENGINES[engine](name, port) + ["--host", HOST, "--port", str(port), "--fake-load-seconds", "0",
                                                       "--fake-token-delay-ms", "2", "--fake-kv-blocks", "64"]
                urls[engine].append(f"http://{HOST}:{port}")
                procs.append(start(argv, f"{urls[engine][-1]}/health", f"fake {engine}"))
        yield urls
    finally:
        for p in procs:
            stop(p, 10)


@pytest.fixture(scope="module")
def router(fakes, tmp_path_factory):
    config = {"models": [
        {"name": "vm", "engine": "vllm", "endpoints": fakes["vllm"], "aliases": ["vm-latest"], "tasks": ["chat"],
         "strategy": "queue-aware"},
        {"name": "sg", "engine": "sglang", "endpoints": fakes["sglang"], "aliases": ["qwen2.5:7b"],
         "strategy": "queue-aware"},
        {"name": "gone", "engine": "vllm", "endpoints": [f"http://{HOST}:{free_port()}"], "fallback": ["vm"]},
    ]}
    yield from static_router(tmp_path_factory, config, "--retries", "1", "--scrape-interval", "0")


def generated(router: str, model: str) -> float:
    """The tokens the router counted for a model (the engines' own usage, where they said it)."""
    for line in httpx.get(f"{router}/metrics").text.splitlines():
        if line.startswith(f'modelship_router_caller_generated_tokens_total{{caller="",model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("model", ["vm", "sg"])
def test_openai_client_chat_and_streams_with_usage(router, model):
    from openai import OpenAI

    client = OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0)
    before = generated(router, model)
    r = client.chat.completions.create(model=model, max_tokens=5, messages=[{"role": "user", "content": "Hello"}])
    assert r.choices[0].message.content and r.usage.completion_tokens == 5 and r.model == model
    chunks = list(client.chat.completions.create(model=model, max_tokens=4, stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "Stream, please"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    streamed = list(client.completions.create(model=model, prompt="Once upon a time", max_tokens=3, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices)
    assert generated(router, model) - before == 5 + 4 + 3  # the engine's usage, and the events counted


def test_vllm_is_reached_by_alias_task_and_as_a_fallback(router):
    from openai import OpenAI

    client = OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0)
    for name in ("vm-latest", "chat", "gone"):  # vLLM itself would answer 404 to each of these names
        r = client.chat.completions.create(model=name, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert r.model == "vm" and r.choices[0].message.content, name


def test_sglang_is_reached_by_an_alias_with_a_colon(router, fakes):
    """SGLang reads `base:adapter` in `model` as a LoRA adapter (400 without LoRA): the router
    asks it by its served name."""
    from openai import OpenAI

    asked = httpx.post(f"{fakes['sglang'][0]}/v1/chat/completions", json={"model": "qwen2.5:7b", "messages": HI})
    assert asked.status_code == 400 and "LoRA adapter '7b' was requested" in asked.json()["message"]
    client = OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="qwen2.5:7b", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert r.model == "sg" and r.choices[0].message.content
    streamed = list(client.chat.completions.create(model="qwen2.5:7b", max_tokens=2, stream=True,
                                                   messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)


@pytest.mark.parametrize("model, engine", [("vm", "vLLM"), ("sg", "SGLang")])
def test_errors_reach_the_openai_client_in_openai_shape(router, model, engine):
    import openai

    client = openai.OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:  # past the context length: the engine's own 400
        client.chat.completions.create(model=model, max_tokens=10, messages=[{"role": "user", "content": "x " * 400}])
    assert e.value.status_code == 400 and "context length" in e.value.message.lower()
    r = httpx.post(f"{router}/v1/chat/completions", json={"model": model, "max_tokens": 10,
                                                            "messages": [{"role": "user", "content": "x " * 400}]})
    assert r.status_code == 400 and error(r)["code"] == 400  # (SGLang's flat body under `error`, as vLLM's)
    r = httpx.post(f"{router}/models/{model}/generate", json={"inputs": "hi"})
    assert r.status_code == 400 and error(r)["message"] == (
        f"model '{model}' is served by {engine}, which has no TGI API: use the OpenAI API (/v1/chat/completions, "
        f"/v1/completions)")


@pytest.mark.parametrize("engine, name", [("vllm", "vm"), ("sglang", "sg")])
def test_queue_aware_reads_each_engines_own_load(fakes, engine, name):
    from modelship.router.balance import make
    from modelship.router.registry import Registry, Target
    from modelship.router.scrape import scrape_once
    from modelship.router.upstream import AiohttpUpstream

    urls = fakes[engine]
    reg, t = Registry(), Target(name, engine, make("queue-aware"))
    t.set_endpoints({u: True for u in urls})
    reg.put(t)

    async def scrape() -> int:
        client = AiohttpUpstream(connect_timeout=2)
        try:
            return await scrape_once(reg, client)
        finally:
            await client.aclose()

    body = {"model": name, "max_tokens": 200, "stream": True, "messages": [{"role": "user", "content": "busy " * 10}]}
    with httpx.stream("POST", f"{urls[0]}/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        for _ in range(3):  # a few events in: running
            next(lines)
        assert asyncio.run(scrape()) == 2
        busy, idle = t.endpoints[urls[0]], t.endpoints[urls[1]]
        assert (busy.running, busy.waiting, idle.running) == (1.0, 0.0, 0.0)
        assert busy.kv_usage > 0 and idle.kv_usage == 0.0  # the engine's KV cache use, where it says it
        assert {t.strategy.pick(None, t.ready()).url for _ in range(10)} == {urls[1]}

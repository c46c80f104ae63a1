"""The vLLM and SGLang fakes (modelship_testbed.engine_fake) against the real `openai` client,
raw HTTP for the exact bytes and error bodies, and prometheus_client's parser for /metrics."""

import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from modelship_testbed.procs import stop
from prometheus_client.parser import text_string_to_metric_families

HOST = "127.0.0.1"
CHAT = [{"role": "user", "content": "Hello there"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def launch(engine: str, *flags: str, stderr=None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if engine == "vllm":
        argv = ["serve", "org/tiny", "--served-model-name", "tiny", "--max-model-len", "512"]
    else:
        argv = ["--model-path", "org/tiny", "--served-model-name", "tiny", "--context-length", "512",
                "--enable-metrics"]
    proc = subprocess.Popen([sys.executable, "-m", f"modelship_testbed.engine_fake.{engine}", *argv,
                             "--host", HOST, "--port", str(port), *flags], stderr=stderr, text=True)
    return proc, f"http://{HOST}:{port}"


def wait_healthy(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not become healthy"
        time.sleep(0.05)


@pytest.fixture(scope="module", params=["vllm", "sglang"])
def fake(request):
    """Each fake with a 1 ms token, loaded at once."""
    proc, url = launch(request.param, "--fake-token-delay-ms", "1", "--fake-prefill-ms-per-token", "0.2",
                       "--fake-load-seconds", "0", "--tensor-parallel-size", "1")
    wait_healthy(url)
    yield request.param, url
    stop(proc, 10)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def metrics(url: str) -> dict[str, object]:
    """name -> family, parsed with prometheus_client's own text parser."""
    return {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}


def gauge(url: str, name: str) -> float:
    fam = metrics(url)[name]
    assert fam.type == "gauge", (name, fam.type)
    return fam.samples[0].value


def test_chat_and_completions_are_deterministic_with_usage(fake):
    engine, url = fake
    c = client(url)
    a = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6)
    b = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6)
    assert a.choices[0].message.content == b.choices[0].message.content != ""
    assert a.choices[0].message.role == "assistant" and a.choices[0].finish_reason == "length"
    assert a.object == "chat.completion" and a.model == "tiny"
    assert a.usage.completion_tokens == 6 and a.usage.total_tokens == a.usage.prompt_tokens + 6
    assert (a.id.startswith("chatcmpl-")) == (engine == "vllm")  # SGLang's ids are bare hex
    other = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Other"}], max_tokens=6)
    assert other.choices[0].message.content != a.choices[0].message.content
    done = c.completions.create(model="tiny", prompt="Once upon", max_tokens=4)
    assert done.object == "text_completion" and done.usage.completion_tokens == 4 and done.choices[0].text
    # No limit asked: the "model" stops on its own (16 tokens by default).
    free = c.chat.completions.create(model="tiny", messages=CHAT)
    assert free.choices[0].finish_reason == "stop" and free.usage.completion_tokens == 16


def test_chat_stream_with_usage(fake):
    engine, url = fake
    c = client(url)
    whole = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5).choices[0].message.content
    chunks = list(c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == whole
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 5
    assert all(ch.usage is None for ch in chunks[:-1])
    assert len({ch.id for ch in chunks}) == 1


def test_sse_bytes_and_completion_stream(fake):
    engine, url = fake
    body = {"model": "tiny", "prompt": "abc", "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
        raw = r.read().decode()
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    parsed = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert [p["object"] for p in parsed] == ["text_completion"] * 4
    assert [p["choices"][0]["finish_reason"] for p in parsed[:3]] == [None, None, "length"]
    assert parsed[-1]["choices"] == [] and parsed[-1]["usage"]["completion_tokens"] == 3
    # Compact JSON, as FastAPI/pydantic/orjson write it.
    assert ", " not in events[0].split('"text"')[0]
    # Without include_usage there is no usage chunk.
    del body["stream_options"]
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
        assert r.read().decode().count("data: ") == 4


def vllm_error(status: int, message: str, kind: str, param=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def sglang_error(status: int, message: str, kind: str = "BadRequestError") -> dict:
    return {"object": "error", "message": message, "type": kind, "param": None, "code": status}


def test_errors_have_the_engines_shape_and_status(fake):
    engine, url = fake
    {"vllm": vllm_errors, "sglang": sglang_errors}[engine](url)


def vllm_errors(url: str) -> None:
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": CHAT})
    assert (r.status_code, r.json()) == (404, vllm_error(404, "The model `nope` does not exist.", "NotFoundError",
                                                         "model"))
    with pytest.raises(openai.NotFoundError):
        client(url).chat.completions.create(model="nope", messages=CHAT)
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "word " * 500, "max_tokens": 20})
    assert (r.status_code, r.json()) == (400, vllm_error(
        400, "This model's maximum context length is 512 tokens. However, you requested 20 output tokens and your "
             "prompt contains 500 input tokens, for a total of 520 tokens. Please reduce the length of the input "
             "prompt or the number of requested output tokens. (parameter=input_tokens, value=500)",
        "BadRequestError", "input_tokens"))
    with pytest.raises(openai.BadRequestError):
        client(url).completions.create(model="tiny", prompt="x", max_tokens=600)
    for raw in (b"{not json", b'{"model": "tiny"}'):
        r = httpx.post(f"{url}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        err = r.json()["error"]
        assert r.status_code == 400 and err["type"] == "Bad Request" and err["code"] == 400, r.text
    r = httpx.post(f"{url}/v1/chat/completions", content=b"{", headers={"content-type": "application/json"})
    assert "'type': 'json_invalid'" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/chat/completions", content=json.dumps({"model": "tiny", "messages": CHAT}))
    assert r.status_code == 400 and "Only 'application/json' is allowed" in r.json()["error"]["message"]


def sglang_errors(url: str) -> None:
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "word " * 600})
    assert (r.status_code, r.json()) == (400, sglang_error(
        400, "The input (600 tokens) is longer than the model's context length (512 tokens)."))
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "word " * 500, "max_tokens": 20})
    assert (r.status_code, r.json()) == (400, sglang_error(
        400, "Requested token count exceeds the model's maximum context length of 512 tokens. You requested a total "
             "of 520 tokens: 500 tokens from the input messages and 20 tokens for the completion. Please reduce the "
             "number of tokens in the input messages or the completion to fit within the limit."))
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": []})
    assert (r.status_code, r.json()) == (400, sglang_error(400, "Messages cannot be empty."))
    r = httpx.post(f"{url}/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["type"] == "Bad Request" and r.json()["object"] == "error"
    with pytest.raises(openai.BadRequestError):
        client(url).completions.create(model="tiny", prompt="x", max_tokens=600)
    # Any model name is served, and echoed back, but for one naming a LoRA adapter (base:adapter).
    assert client(url).chat.completions.create(model="anything", messages=CHAT, max_tokens=1).model == "anything"
    assert client(url).chat.completions.create(model="qwen2.5:", messages=CHAT, max_tokens=1).model == "qwen2.5:"
    for stream in (False, True):
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "qwen2.5:7b", "messages": CHAT, "stream": stream})
        assert (r.status_code, r.json()) == (400, sglang_error(
            400, "LoRA adapter '7b' was requested, but LoRA is not enabled. Please launch the server with "
                 "--enable-lora flag and preload adapters using --lora-paths or /load_lora_adapter endpoint.",
            "BadRequest"))


def test_models_and_health(fake):
    engine, url = fake
    r = httpx.get(f"{url}/health")
    assert (r.status_code, r.content) == (200, b"")
    card = httpx.get(f"{url}/v1/models").json()["data"][0]
    assert (card["id"], card["object"], card["max_model_len"], card["root"]) == ("tiny", "model", 512, "org/tiny")
    assert card["owned_by"] == engine
    if engine == "vllm":
        assert card["parent"] is None and card["permission"][0]["object"] == "model_permission"
    assert [m.id for m in client(url).models.list()] == ["tiny"]


EXPECTED = {
    "vllm": {"vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge",
             "vllm:kv_cache_usage_perc": "gauge", "vllm:prompt_tokens": "counter",
             "vllm:generation_tokens": "counter", "vllm:prefix_cache_queries": "counter",
             "vllm:prefix_cache_hits": "counter", "vllm:request_success": "counter",
             "vllm:time_to_first_token_seconds": "histogram", "vllm:e2e_request_latency_seconds": "histogram"},
    "sglang": {"sglang:num_running_reqs": "gauge", "sglang:num_queue_reqs": "gauge", "sglang:token_usage": "gauge",
               "sglang:cache_hit_rate": "gauge", "sglang:prompt_tokens": "counter",
               "sglang:generation_tokens": "counter", "sglang:time_to_first_token_seconds": "histogram"},
}
LABELS = {"vllm": {"model_name": "tiny", "engine": "0"},
          "sglang": {"model_name": "tiny", "engine_type": "unified", "tp_rank": "0", "pp_rank": "0"}}


def test_metrics_names_types_and_labels(fake):
    engine, url = fake
    client(url).chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
    fams = metrics(url)
    for name, kind in EXPECTED[engine].items():
        assert fams[name].type == kind, name
    running = "vllm:num_requests_running" if engine == "vllm" else "sglang:num_running_reqs"
    assert fams[running].samples[0].labels == LABELS[engine]
    prompt = fams["vllm:prompt_tokens" if engine == "vllm" else "sglang:prompt_tokens"].samples[0]
    assert prompt.name.endswith("_total") and prompt.value > 0


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_kv_usage_rises_under_load_and_falls_after(engine):
    """A fake of 64 KV blocks (of 16 tokens) and 5 ms a token: 6 requests of 300 prompt
    tokens (19 blocks each) and 200 answer tokens (1 s each); 3 fit, the others wait."""
    proc, url = launch(engine, "--fake-token-delay-ms", "5", "--fake-load-seconds", "0", "--fake-kv-blocks", "64")
    try:
        wait_healthy(url)
        peak_kv, peak_waiting, kv, waiting = load_kv(engine, url)
        assert 0.5 <= peak_kv <= 1.0, peak_kv
        assert peak_waiting >= 1, peak_waiting
        assert (kv, waiting) == (0, 0)
    finally:
        stop(proc, 10)


def load_kv(engine: str, url: str) -> tuple[float, float, float, float]:
    """The peaks of KV usage and of waiting requests under the load, then both once it ended."""
    kv = "vllm:kv_cache_usage_perc" if engine == "vllm" else "sglang:token_usage"
    waiting = "vllm:num_requests_waiting" if engine == "vllm" else "sglang:num_queue_reqs"
    assert gauge(url, kv) == 0
    bodies = [{"model": "tiny", "prompt": " ".join(f"kv{i}x{j}" for j in range(300)), "max_tokens": 200}
              for i in range(6)]
    threads = [threading.Thread(target=httpx.post, args=(f"{url}/v1/completions",),
                                kwargs={"json": b, "timeout": 60}) for b in bodies]
    for t in threads:
        t.start()
    peak_kv = peak_waiting = 0.0
    deadline = time.monotonic() + 30
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        peak_kv, peak_waiting = max(peak_kv, gauge(url, kv)), max(peak_waiting, gauge(url, waiting))
        time.sleep(0.05)
    for t in threads:
        t.join()
    return peak_kv, peak_waiting, gauge(url, kv), gauge(url, waiting)


def test_prefix_cache_hits_on_a_repeated_prompt(fake):
    engine, url = fake
    prompt = " ".join(f"pc{i}" for i in range(64))  # 4 full blocks
    c = client(url)
    before = metrics(url)
    c.completions.create(model="tiny", prompt=prompt, max_tokens=1)
    c.completions.create(model="tiny", prompt=prompt, max_tokens=1)
    after = metrics(url)
    hits = "vllm:prefix_cache_hits" if engine == "vllm" else "sglang:cached_tokens"
    assert after[hits].samples[0].value - before[hits].samples[0].value == 64
    if engine == "sglang":
        assert after["sglang:cache_hit_rate"].samples[0].value > 0


def aborted(engine: str, url: str) -> float:
    if engine == "vllm":
        return next(s.value for s in metrics(url)["vllm:request_success"].samples
                    if s.labels.get("finished_reason") == "abort" and s.name.endswith("_total"))
    return metrics(url)["sglang:num_aborted_requests"].samples[0].value


def test_a_client_that_leaves_stops_its_generation(fake):
    engine, url = fake
    running = "vllm:num_requests_running" if engine == "vllm" else "sglang:num_running_reqs"
    before = aborted(engine, url)
    body = {"model": "tiny", "prompt": "long", "max_tokens": 500, "stream": True}  # >= 0.5 s of tokens
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
        next(r.iter_bytes())
    deadline = time.monotonic() + 5
    while gauge(url, running) != 0 or aborted(engine, url) != before + 1:
        assert time.monotonic() < deadline, "the request kept running after its client left"
        time.sleep(0.05)


def first_status(url: str) -> int:
    """The status of the first /health that gets an answer (connections refused till then)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return httpx.get(f"{url}/health").status_code
        except httpx.ConnectError:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_loading_as_each_engine_does_and_generation_defaults():
    """Both load the model before they listen (connections refused); SGLang then answers
    /health 503 during its warm-up. --override-generation-config / --preferred-sampling-params
    set the default length."""
    vllm, vurl = launch("vllm", "--fake-load-seconds", "1.5", "--fake-token-delay-ms", "1",
                        "--override-generation-config", '{"max_new_tokens": 5, "temperature": 0.2}')
    sglang, surl = launch("sglang", "--fake-load-seconds", "1.5", "--fake-token-delay-ms", "1",
                          "--fake-warmup-seconds", "3", "--preferred-sampling-params", '{"max_new_tokens": 4}')
    try:
        started = time.monotonic()
        assert first_status(surl) == 503 and time.monotonic() - started > 1  # refused while loading, then warming
        wait_healthy(vurl)
        wait_healthy(surl)
        for url in (vurl, surl):
            answer = client(url).chat.completions.create(model="tiny", messages=CHAT)
            assert (answer.usage.completion_tokens, answer.choices[0].finish_reason) == \
                ((5 if url == vurl else 4), "length")
    finally:
        stop(vllm, 10)
        stop(sglang, 10)


def test_vllm_answers_to_each_served_name():
    proc, url = launch("vllm", "--fake-load-seconds", "0", "--served-model-name", "tiny", "tiny-alias")
    try:
        wait_healthy(url)
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["tiny", "tiny-alias"]
        answer = client(url).chat.completions.create(model="tiny-alias", messages=CHAT, max_tokens=1)
        assert answer.model == "tiny"  # vLLM answers with its first name
        assert httpx.post(f"{url}/v1/completions", json={"model": "org/tiny", "prompt": "x"}).status_code == 404
    finally:
        stop(proc, 10)


def test_sglang_native_generate_and_metrics_only_when_enabled():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "modelship_testbed.engine_fake.sglang", "--model-path", "org/tiny",
                             "--host", HOST, "--port", str(port), "--fake-load-seconds", "0"])
    url = f"http://{HOST}:{port}"
    try:
        wait_healthy(url)
        assert httpx.get(f"{url}/metrics").status_code == 404
        r = httpx.post(f"{url}/generate", json={"text": "Hi", "sampling_params": {"max_new_tokens": 3}}).json()
        assert r["meta_info"]["finish_reason"] == {"type": "length", "length": 3}
        assert r["meta_info"]["completion_tokens"] == 3 and r["text"]
        with httpx.stream("POST", f"{url}/generate", json={"text": "Hi", "stream": True,
                                                           "sampling_params": {"max_new_tokens": 3}}) as s:
            events = s.read().decode().split("\n\n")
        assert events[-2:] == ["data: [DONE]", ""]
        assert json.loads(events[-3][6:])["text"] == r["text"]
        r = httpx.post(f"{url}/generate", json={"text": "word " * 5000})
        assert (r.status_code, r.json()) == (400, {"error": {"message": "The input (5000 tokens) is longer than "
                                                             "the model's context length (4096 tokens)."}})
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "org/tiny"  # no --served-model-name
    finally:
        stop(proc, 10)


def test_reset_zeroes_the_metrics(fake):
    engine, url = fake
    client(url).completions.create(model="tiny", prompt="reset me", max_tokens=2)
    assert httpx.post(f"{url}/fake/reset", json={"cache_blocks": 128}).json() == {"cache_blocks": 128}
    fams = metrics(url)
    name = "vllm:generation_tokens" if engine == "vllm" else "sglang:generation_tokens"
    assert fams[name].samples[0].value == 0

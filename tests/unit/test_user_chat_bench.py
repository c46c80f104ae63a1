"""`modelship chat` and `modelship bench` against a fake router on loopback: an OpenAI API
that streams its answers in SSE chunks (usage in the last one) and records what it was sent,
and TGI's native API at /models/{name}/generate_stream. Chat is driven through a
pseudo-terminal (pexpect), as a person would use it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pexpect
import pytest
from click.testing import CliRunner

from modelship.user import reach
from modelship.user.bench import bench
from modelship.user.bench_run import percentiles
from modelship.user.chat import chat

ROOT = Path(__file__).resolve().parents[2]
ANSWER = ["Hello", " there", ", friend."]
USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


class Fake(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # bodies end when the connection closes: no chunking to write
    received: list = []
    count = [0]
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with self.lock:
            self.received.append({"path": self.path, "body": body, "auth": self.headers.get("authorization")})
            self.count[0] += 1
            n = self.count[0]
        model = body.get("model") or self.path.split("/")[2]
        if model == "nope":
            return self.error(404, f"model {model!r} not found; try GET /v1/models")
        if model == "flaky" and n % 2 == 0:
            return self.error(503, "model 'flaky' is starting", {"retry-after": "7"})
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        if self.path.endswith("/generate_stream"):
            return self.tgi()
        for word in ANSWER:
            self.event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": word}}]})
        if model != "nousage" and (body.get("stream_options") or {}).get("include_usage"):
            self.event({"object": "chat.completion.chunk", "choices": [], "usage": USAGE})
        self.wfile.write(b"data: [DONE]\n\n")

    def tgi(self):
        for i, word in enumerate(ANSWER):
            last = i == len(ANSWER) - 1
            self.event({"token": {"id": i, "text": word, "logprob": -0.5, "special": False},
                        "generated_text": "".join(ANSWER) if last else None,
                        "details": {"finish_reason": "length", "generated_tokens": 5, "seed": None} if last else None})

    def event(self, data):
        self.wfile.write(b"data: " + json.dumps(data).encode() + b"\n\n")
        self.wfile.flush()

    def error(self, status, message, headers=None):
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": "x"}}).encode()
        self.send_response(status)
        for k, v in {"content-type": "application/json", "content-length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake():
    Fake.received, Fake.count = [], [0]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}", received=Fake.received)
    server.shutdown()
    server.server_close()


def env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")]),
            "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}


CLI = [sys.executable, "-c", "from modelship.cli import main; main()"]


def messages(fake, i):
    return fake.received[i]["body"]["messages"]


def test_chat_in_a_terminal_keeps_history_clears_it_and_sets_a_system_prompt(fake):
    child = pexpect.spawn(CLI[0], CLI[1:] + ["chat", "smollm2", "--router-url", fake.url, "--api-key", "k1",
                                             "--temperature", "0.5"], env=env(), encoding="utf-8", timeout=20)
    child.expect("Talking to smollm2")
    child.expect("> ")
    child.sendline("Hi?")
    child.expect("Hello there, friend.")
    child.expect("> ")
    assert messages(fake, 0) == [{"role": "user", "content": "Hi?"}]
    assert fake.received[0]["body"]["temperature"] == 0.5 and fake.received[0]["body"]["stream"] is True
    assert fake.received[0]["auth"] == "Bearer k1"
    child.sendline("And then?")
    child.expect("friend.")
    child.expect("> ")
    assert [m["content"] for m in messages(fake, 1)] == ["Hi?", "Hello there, friend.", "And then?"]
    child.sendline("/clear")
    child.expect("history cleared")
    child.sendline("/system Be brief.")
    child.expect("system prompt set")
    child.sendline("Again")
    child.expect("friend.")
    child.expect("> ")
    assert messages(fake, 2) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Again"}]
    child.sendline("/help")
    child.expect("/clear")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and len(fake.received) == 3


def test_chat_says_an_unknown_model_in_one_line_and_goes_on(fake):
    child = pexpect.spawn(CLI[0], CLI[1:] + ["chat", "nope", "--router-url", fake.url], env=env(),
                          encoding="utf-8", timeout=20)
    child.expect("> ")
    child.sendline("Hi?")
    child.expect(r"Error: not found \(404\): model 'nope' not found[^\n]*\r?\n")
    child.expect("> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in (child.before or "")


def test_chat_without_a_terminal_answers_one_prompt_from_stdin(fake):
    done = subprocess.run(CLI + ["chat", "smollm2", "--router-url", fake.url, "--system", "S", "--seed", "3"],
                          input="What is it?\n", capture_output=True, text=True, env=env(), timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello there, friend.\n"
    assert messages(fake, 0) == [{"role": "system", "content": "S"}, {"role": "user", "content": "What is it?"}]
    assert fake.received[0]["body"]["seed"] == 3
    gone = subprocess.run(CLI + ["chat", "nope", "--router-url", fake.url], input="x", capture_output=True,
                          text=True, env=env(), timeout=30)
    assert gone.returncode == 3 and gone.stderr.strip().count("\n") == 0 and "404" in gone.stderr
    closed = subprocess.run(CLI + ["chat", "m", "--router-url", "http://127.0.0.1:9"], input="x",
                            capture_output=True, text=True, env=env(), timeout=30)
    assert closed.returncode == 1 and "cannot reach the router" in closed.stderr and "Traceback" not in closed.stderr


def run_bench(*args):
    result = CliRunner().invoke(bench, list(args), catch_exceptions=False)
    return result


def validate(result):
    schema = json.loads((ROOT / "docs" / "bench.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(result, schema)


def test_bench_takes_the_engines_usage_and_validates(fake):
    out = run_bench("smollm2", "--router-url", fake.url, "--concurrency", "1,3", "--requests", "6",
                    "--prompt-tokens", "40", "--max-tokens", "9", "-o", "json", "--api-key", "k2")
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    validate(result)
    assert [r["concurrency"] for r in result["runs"]] == [1, 3]
    for r in result["runs"]:
        assert (r["requests"], r["errors"]) == (6, 0)
        assert r["prompt_tokens"] == 6 * USAGE["prompt_tokens"]
        assert r["generated_tokens"] == 6 * USAGE["completion_tokens"]
        assert r["ttft_ms"]["p50"] <= r["latency_ms"]["p99"]
    sent = fake.received[0]
    assert sent["body"]["stream_options"] == {"include_usage": True} and sent["body"]["max_tokens"] == 9
    assert sent["auth"] == "Bearer k2" and len(fake.received) == 12
    assert result["averages"]["requests"] == 12 and result["client"]["cores"] >= 1


def test_bench_counts_tokens_without_usage_and_counts_errors(fake):
    result = json.loads(run_bench("nousage", "--router-url", fake.url, "--concurrency", "2", "--requests", "4",
                                  "--prompt-tokens", "40", "-o", "json").output)
    validate(result)
    assert result["runs"][0]["generated_tokens"] == 4 * len(ANSWER) and result["runs"][0]["prompt_tokens"] == 4 * 40
    Fake.count[0] = 0
    flaky = run_bench("flaky", "--router-url", fake.url, "--concurrency", "1", "--requests", "4", "-o", "json")
    result = json.loads(flaky.output)
    validate(result)
    run = result["runs"][0]
    assert (run["requests"], run["errors"]) == (4, 2) and "retry in 7 s" in run["error_examples"][0]
    assert run["generated_tokens"] == 2 * USAGE["completion_tokens"]
    table = run_bench("nope", "--router-url", fake.url, "--requests", "2")
    assert table.exit_code == 3 and "every request failed" in table.output and "404" in table.output  # as chat


def test_bench_through_tgis_api(fake):
    out = run_bench("mistral", "--router-url", fake.url, "--api", "tgi", "--concurrency", "2", "--requests", "2",
                    "-o", "json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    validate(result)
    assert {r["path"] for r in fake.received} == {"/models/mistral/generate_stream"}
    assert result["runs"][0]["generated_tokens"] == 2 * 5  # TGI's details.generated_tokens


def test_help_has_examples():
    for command in (chat, bench):
        out = CliRunner().invoke(command, ["--help"])
        assert out.exit_code == 0 and "Examples:" in out.output and "--router-url" in out.output


def test_percentiles():
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "mean": None}
    p = percentiles([i / 1000 for i in range(1, 101)])
    assert (p["p50"], p["p90"], p["mean"]) == (50.5, 90.1, 50.5)


def pod(name, ready=True, deleting=None):
    condition = SimpleNamespace(type="Ready", status="True" if ready else "False")
    return SimpleNamespace(metadata=SimpleNamespace(name=name, namespace="ms", deletion_timestamp=deleting),
                           status=SimpleNamespace(conditions=[condition]))


def test_the_router_is_found_by_its_label_and_a_ready_pod_through_its_selector():
    service = SimpleNamespace(metadata=SimpleNamespace(name="modelship-router", namespace="ms"),
                              spec=SimpleNamespace(selector={"app": "r"},
                                                   ports=[SimpleNamespace(name="http", port=80)]))
    asked = []

    class Core:
        def list_service_for_all_namespaces(self, label_selector):
            asked.append(label_selector)
            return SimpleNamespace(items=[service])

        def list_namespaced_service(self, namespace, label_selector):
            return SimpleNamespace(items=[])

        def list_namespaced_pod(self, namespace, label_selector):
            asked.append(label_selector)
            return SimpleNamespace(items=[pod("b", deleting="now"), pod("c"), pod("a", ready=False)])

    assert reach.find_service(Core(), None) is service
    assert reach.service_url(service) == "http://modelship-router.ms.svc:80"
    assert reach.ready_pod(Core(), service).metadata.name == "c"
    assert asked == ["app.kubernetes.io/component=router", "app=r"]
    with pytest.raises(reach.UserError, match="install the chart .* or pass --router-url"):
        reach.find_service(Core(), "elsewhere")


def test_the_port_forward_relays_and_closes():
    """The listener and its relay, with a loopback socket standing in for the API server's stream."""
    import socket

    echo = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = echo.accept()
        conn.sendall(conn.recv(100).upper())
        conn.close()

    threading.Thread(target=serve, daemon=True).start()

    class Forward(reach.PortForward):
        def _probe(self):
            pass

        def _relay(self, conn):
            remote = socket.create_connection(echo.getsockname())
            reach.pump(conn, remote, self.stopping)
            conn.close()

    forward = Forward(None, "ms", "p", 8000)
    with forward as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"hello")
            assert c.recv(100) == b"HELLO"
    assert forward.threads and not any(t.is_alive() for t in forward.threads)  # joined on exit
    echo.close()

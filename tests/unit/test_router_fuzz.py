"""The router's OpenAPI document (`GET /openapi.json`, router/openapi.py), checked against
what the router does: schemathesis generates requests for every operation from the document
the router serves, bodies that fit it and bodies that do not, and sends them to
`modelship router --static` in front of two healthy fake TGIs (one served as llama.cpp).

Each answer must be declared (status code, content type, JSON schema), never a 5xx (the fakes
never fail, so any 5xx is the router's), and come within a bound. And the document agrees
with validate.py: a body the schema allows is never refused by the router's checks, and one
it forbids is refused (4xx)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from modelship_testbed.procs import stop

from .test_router import HOST, free_port, wait_http

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance, response_schema_conformance, status_code_conformance)

DEBUG = False
EXAMPLES = 25  # per operation and mode
BOUND = 5.0  # seconds an answer may take (the fakes answer in milliseconds)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
VALIDATE_CODES = {"missing_required_parameter", "invalid_type", "invalid_value"}


def start_logged(argv: list[str], health: str, what: str, log: Path) -> subprocess.Popen:
    """Start a program with its output in a file: a pipe nobody reads fills after a few hundred
    logged requests (64 KiB) and blocks the program mid-answer, which looks like a hang."""
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(health, what)
    except AssertionError:
        stop(proc, 10)
        raise AssertionError(f"{what} did not start: {log.read_text()[-2000:]}") from None
    return proc


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    procs, urls = [], []
    try:
        for i in range(2):
            port = free_port()
            urls.append(f"http://{HOST}:{port}")
            procs.append(start_logged([sys.executable, "-m", "modelship_testbed.tgi_fake", "--model-id", "org/tiny",
                                       "--hostname", HOST, "--port", str(port), "--fake-token-delay-ms", "0",
                                       "--fake-prefill-ms-per-token", "0", "--fake-load-seconds", "0",
                                       "--max-total-tokens", "64", "--max-input-tokens", "32"],
                                      f"{urls[-1]}/health", "fake TGI", folder / f"fake{i}.log"))
        config = {"models": [{"name": "tiny", "engine": "tgi", "endpoints": [urls[0]]},
                             {"name": "cpu", "engine": "llamacpp", "endpoints": [urls[1]]}]}
        path = folder / "static.yaml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        url = f"http://{HOST}:{port}"
        procs.append(start_logged([str(Path(sys.executable).with_name("modelship")), "router", "--static", str(path),
                                   "--host", HOST, "--port", str(port), "--max-body-bytes", "100000",
                                   "--body-timeout", "5"], f"{url}/health", "router", folder / "router.log"))
        yield url
    finally:
        router = procs.pop() if len(procs) == 3 else None
        for p in procs:
            stop(p, 10)
        if router is not None:
            stop(router, 20)
            said = (folder / "router.log").read_text()
            assert "Traceback" not in said, said[-3000:]


def test_the_document_names_every_field_the_checks_know():
    from modelship.router import openapi, validate

    assert set(openapi.CHAT) == set(validate.CHAT)
    assert set(openapi.COMPLETION) == set(validate.COMPLETION)
    assert set(openapi.TGI_PARAMETERS) == set(validate.TGI_PARAMETERS)


def test_the_document_is_served_without_a_key(fuzzed):
    r = httpx.get(f"{fuzzed}/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["openapi"] == "3.1.0"
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/models/{name}/generate",
            "/models/{name}/generate_stream", "/models/{name}/info", "/models/{name}", "/health", "/metrics",
            "/openapi.json", "/modelship/quota", "/modelship/load"} == set(r.json()["paths"])


def _agrees(mode: GenerationMode, case, response) -> str | None:
    """Whether the router's checks judged the body as the schema does: None, or what differs."""
    if case.body is None or not isinstance(case.body, (dict, list, str, int, float, bool)):
        return None
    refused = response.status_code == 400 and _code(response) in VALIDATE_CODES
    # JSON Schema counts 1.0 as an integer; the router, as OpenAI and TGI do, refuses a number
    # written with a decimal point where an integer goes (the document says so in `info`).
    decimal = refused and "but got a decimal number instead" in response.text
    if mode is GenerationMode.POSITIVE and refused and not decimal and _param(response) != "model":
        return f"the schema allows this body, the router refused it: {response.text[:300]}"
    if mode is GenerationMode.NEGATIVE and response.status_code < 400 and _body_negated(case):
        return f"the schema forbids this body, the router let it through ({response.status_code})"
    return None


def _code(response):
    try:
        return response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - not the router's error shape
        return None


def _param(response):
    return response.json()["error"]["param"]


def _body_negated(case) -> bool:
    meta = getattr(case, "meta", None)
    components = getattr(getattr(meta, "generation", None), "mode", None) if meta else None
    phase = getattr(meta, "components", None) if meta else None
    if phase is None:
        return components == GenerationMode.NEGATIVE
    body = phase.get("body") if isinstance(phase, dict) else None
    return body is not None and getattr(body, "mode", None) == GenerationMode.NEGATIVE


@pytest.mark.timeout(300)
def test_every_operation_fuzzed(fuzzed):
    schema = schemathesis.openapi.from_url(f"{fuzzed}/openapi.json")
    figures: dict[str, int] = {}
    failures: list[str] = []
    turn = [0]
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        fixed = [None, {"name": "tiny"}] if "{name}" in operation.path else [None]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in fixed:
                try:
                    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
                except Exception:  # noqa: BLE001 - nothing to negate in this operation
                    continue

                @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
                @given(strategy)
                def one(case):
                    turn[0] += 1
                    if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and turn[0] % 3:
                        case.body["model"] = ("tiny", "cpu")[turn[0] % 2]  # (also a name that exists)
                    began = time.monotonic()
                    if DEBUG:
                        print(label, mode.value, case.path_parameters, case.headers, len(repr(case.body)), flush=True)
                    try:
                        response = case.call(base_url=fuzzed, timeout=BOUND + 5)
                    except Exception as e:  # noqa: BLE001 - no answer in time: say which request
                        failures.append(f"{label} ({mode.value}): {case.body!r:.300} -> no answer: {e!r:.200}")
                        return
                    took = time.monotonic() - began
                    figures[label] = figures.get(label, 0) + 1
                    problems = []
                    if took > BOUND:
                        problems.append(f"took {took:.1f} s")
                    try:
                        case.validate_response(response, checks=CHECKS)
                    except Exception as e:  # noqa: BLE001 - gathered, reported together
                        problems.append(str(e)[:600])
                    differs = _agrees(mode, case, response)
                    if differs:
                        problems.append(differs)
                    if problems:
                        failures.append(f"{label} ({mode.value}): {case.body!r:.200} -> {response.status_code}: "
                                        + "; ".join(problems))

                try:
                    one()
                except Exception as e:  # noqa: BLE001 - an unsatisfiable negative, say
                    if "Unsatisfiable" not in type(e).__name__:
                        raise
    print(f"fuzzed {len(figures)} operations, {sum(figures.values())} requests: {figures}")
    # Every operation but GET /openapi.json, which schemathesis leaves out (the document's own
    # address; test_the_document_is_served_without_a_key asks it).
    assert len(figures) == 11 and "GET /openapi.json" not in figures, figures
    assert not failures, "\n".join(failures[:20])

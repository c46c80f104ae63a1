"""The router's settings: sources, errors, documentation."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic.alias_generators import to_camel

from modelship.cli import main
from modelship.router.settings import ConfigError, RouterSettings, load

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("MODELSHIP_ROUTER_")]:
        monkeypatch.delenv(name)


def test_the_defaults_are_those_the_flags_had():
    s = load()
    assert (s.host, s.port, s.max_body_bytes, s.connect_timeout, s.first_byte_timeout, s.idle_timeout) == (
        "0.0.0.0", 8000, 8 << 20, 5.0, 300.0, 120.0)
    assert (s.retries, s.retry_budget, s.retry_after, s.drain_seconds, s.scrape_interval) == (2, 10.0, 5, 30, 1.0)
    assert s.static is None and s.api_keys_file is None and s.namespaces == [] and s.allow_cidrs == []


def test_settings_from_file_then_environment_then_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "router.yaml"
    cfg.write_text("maxBodyBytes: 1000\nretries: 5\nnamespaces: [a]\nallowCidrs: [127.0.0.0/8]\n"
                   "first_byte_timeout: 9\n")
    monkeypatch.setenv("MODELSHIP_ROUTER_CONFIG", str(cfg))
    monkeypatch.setenv("MODELSHIP_ROUTER_RETRIES", "6")
    monkeypatch.setenv("MODELSHIP_ROUTER_NAMESPACES", "b, c")
    s = load(namespaces=["d"])
    assert s.max_body_bytes == 1000 and s.first_byte_timeout == 9 and s.allow_cidrs == ["127.0.0.0/8"]
    assert s.retries == 6  # the environment wins over the file
    assert s.namespaces == ["d"]  # and a flag over both
    other = tmp_path / "other.yaml"
    other.write_text("maxBodyBytes: 2000\n")
    assert load(config=str(other)).max_body_bytes == 2000  # --config wins over MODELSHIP_ROUTER_CONFIG


@pytest.mark.parametrize("content,message", [
    ("retries: lots\n", "invalid router setting retries: Input should be a valid integer"),
    ("maxBodyBytes: 0\n", "invalid router setting maxBodyBytes"),
    ("allowCidrs: [10.0.0.0/33]\n", "invalid router setting allowCidrs: '10.0.0.0/33' does not appear"),
    ("firstByteTimout: 5\n", "invalid router setting firstByteTimout: Extra inputs are not permitted"),
    ("config: other.yaml\n", "`config` names the settings file"),
    ("[1, 2]\n", "must hold a mapping"),
])
def test_bad_settings_say_what_to_fix(tmp_path, content, message):
    cfg = tmp_path / "router.yaml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load(config=str(cfg))


def test_the_command_says_a_bad_setting_in_one_line(tmp_path):
    cfg = tmp_path / "router.yaml"
    cfg.write_text("idleTimeout: -1\n")
    result = CliRunner().invoke(main, ["router", "--config", str(cfg)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines() == [
        "Error: invalid router setting idleTimeout: Input should be greater than 0 (from the flags, "
        "MODELSHIP_ROUTER_* variables or the settings file)"]
    assert "[default: 300.0]" in CliRunner().invoke(main, ["router", "--help"]).output


def test_docs_document_every_router_setting():
    text = (REPO / "docs" / "configuration.md").read_text()
    section = text.split("\n## The router's settings\n", 1)[1].split("\n## ", 1)[0]
    for name in RouterSettings.model_fields:
        assert f"`{to_camel(name)}`" in section, f"docs/configuration.md does not document the setting {to_camel(name)}"
        assert f"`MODELSHIP_ROUTER_{name.upper()}`" in section, \
            f"docs/configuration.md does not name MODELSHIP_ROUTER_{name.upper()}"


def test_the_chart_mounts_a_settings_file_the_router_reads(tmp_path):
    """The chart's values become one settings file in a ConfigMap, which the router accepts
    as it is, named by --config; a changed value rolls the pods (the checksum changes)."""
    import subprocess

    import yaml

    from modelship_testbed import binaries

    helm = binaries.find("helm")
    if helm is None:
        pytest.skip("helm is not built here (modelship testbed build)")

    def render(*sets: str) -> dict[str, dict]:  # the router alone: one Deployment, one ConfigMap
        args = [str(helm), "template", "r", str(REPO / "charts" / "modelship"), "-n", "ns", "--kube-version",
                binaries.KUBERNETES_VERSION]
        for s in ("operator.enabled=false", "crds.enabled=false", *sets):
            args += ["--set", s]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        return {d["kind"]: d for d in yaml.safe_load_all(out) if d}

    docs = render("namespaces={a,b}", "router.apiKeys.secretName=keys", "router.timeouts.firstByte=600",
                  "router.allowCidrs={127.0.0.0/8}", "router.maxBodyBytes=100000000")
    pod = docs["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["router", "--config=/etc/modelship/router/settings.yaml", "--namespace=a",
                                 "--namespace=b"]
    assert {"name": "api-keys", "mountPath": "/etc/modelship/api-keys", "readOnly": True} in container["volumeMounts"]
    assert {"name": "settings", "configMap": {"name": "r-router"}} in pod["spec"]["volumes"]
    assert pod["spec"]["enableServiceLinks"] is False  # the release's own Service would read as settings
    settings = tmp_path / "settings.yaml"
    settings.write_text(docs["ConfigMap"]["data"]["settings.yaml"])
    s = load(config=str(settings))
    assert (s.host, s.port, s.first_byte_timeout, s.max_body_bytes, s.allow_cidrs, s.api_keys_file) == (
        "0.0.0.0", 8000, 600, 100_000_000, ["127.0.0.0/8"], "/etc/modelship/api-keys/keys")
    plain = render()
    settings.write_text(plain["ConfigMap"]["data"]["settings.yaml"])
    # the values' defaults are the router's, but the peers: the replicas of the release's Service
    rendered = load(config=str(settings))
    assert rendered.peers_service == "ns/r-router"
    assert rendered.model_dump(exclude={"config", "peers_service"}) == load().model_dump(exclude={"config",
                                                                                               "peers_service"})
    checksum = "checksum/settings"
    assert plain["Deployment"]["spec"]["template"]["metadata"]["annotations"][checksum] != \
        pod["metadata"]["annotations"][checksum]
    assert render("router.replicas=3")["Deployment"]["spec"]["template"]["metadata"]["annotations"][checksum] == \
        plain["Deployment"]["spec"]["template"]["metadata"]["annotations"][checksum]
    # Callers and limits apply live (the router follows the file): changing them rolls nothing.
    limited = render("router.callers.team-a.requestsPerMinute=60", "router.callers.team-a.models={chat}",
                     "router.modelLimits.big.concurrentRequests=4")
    assert limited["Deployment"]["spec"]["template"]["metadata"]["annotations"][checksum] == \
        plain["Deployment"]["spec"]["template"]["metadata"]["annotations"][checksum]
    settings.write_text(limited["ConfigMap"]["data"]["settings.yaml"])
    s = load(config=str(settings))
    assert (s.callers["team-a"].requests_per_minute, s.callers["team-a"].models,
            s.model_limits["big"].concurrent_requests) == (60, ["chat"], 4)


def test_kubernetes_service_links_are_never_settings(tmp_path, monkeypatch):
    """A Service `modelship-router` gives every pod of its namespace MODELSHIP_ROUTER_PORT=tcp://...
    (unless the pod turns service links off): it is not the router's port."""
    monkeypatch.setenv("MODELSHIP_ROUTER_PORT", "tcp://10.96.0.10:80")
    monkeypatch.setenv("MODELSHIP_ROUTER_SERVICE_PORT", "80")  # (not a setting: ignored as before)
    settings = tmp_path / "settings.yaml"
    settings.write_text("port: 9000\n")
    assert load(config=str(settings)).port == 9000
    assert load().port == 8000
    monkeypatch.setenv("MODELSHIP_ROUTER_PORT", "8100")  # a real setting still wins over the file
    assert load(config=str(settings)).port == 8100

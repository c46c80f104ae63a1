"""`modelship deploy`, `ls`, `status`, `delete` without a cluster: the object deploy builds (checked
with the API's own models), one-line errors with their exit codes, the rendering of recorded
status objects, and --wait against a stub CustomObjectsApi."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import yaml
from click.testing import CliRunner
from kubernetes.client.exceptions import ApiException

from modelship import api
from modelship.cli import main
from modelship.user import common, render, watch
from modelship.user.deploy import derive_name

NOW = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def dry_run(*args: str) -> dict:
    result = run("deploy", *args, "--dry-run", "-o", "yaml")
    assert result.exit_code == 0, result.output
    obj = yaml.safe_load(result.output)
    api.ModelDeployment.model_validate(obj)
    return obj


# --- deploy: the object --------------------------------------------------------------------


def test_dry_run_has_the_flags_values_and_validates():
    obj = dry_run("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@v1.0", "--quant", "Q8_0", "--pool", "cpu-big",
                  "--gpus", "1", "--replicas", "2", "--min-replicas", "0", "--max-replicas", "4",
                  "--alias", "smol", "--alias", "tiny", "-n", "models")
    spec = obj["spec"]
    assert obj["kind"] == "ModelDeployment" and obj["apiVersion"] == "modelship.io/v1alpha1"
    assert obj["metadata"] == {"name": "smollm2-135m-instruct-gguf", "namespace": "models"}
    assert spec["model"] == {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "revision": "v1.0",
                             "quantization": "Q8_0"}
    assert (spec["pool"], spec["gpus"], spec["replicas"]) == ("cpu-big", 1, 2)
    assert (spec["minReplicas"], spec["maxReplicas"]) == (0, 4)
    assert spec["router"]["aliases"] == ["smol", "tiny"]


def test_dry_run_json_and_tgi_quantization():
    result = run("deploy", "Qwen/Qwen2.5-0.5B-Instruct", "--engine", "tgi", "--quant", "AWQ", "--dry-run",
                 "-o", "json")
    assert result.exit_code == 0, result.output
    spec = api.ModelDeployment.model_validate(json.loads(result.output)).spec
    assert spec.engine.type == "tgi" and spec.serving.quantize == "awq" and spec.model.quantization is None


@pytest.mark.parametrize("repo, name", [
    ("TheBloke/Mistral-7B-Instruct-v0.2-GGUF", "mistral-7b-instruct-v0-2-gguf"),
    ("org/1337_Model..Name__", "model-name"),
    ("org/" + "Very-Long_Model.Name" * 4, ("very-long-model-name" * 3)[:48].rstrip("-")),
    ("org/123", "model"),
])
def test_names_are_derived_within_the_crd_rule(repo, name):
    assert derive_name(repo) == name
    assert len(name) <= 48 and name[0].isalpha()


def test_a_long_repo_name_deploys_under_48_characters():
    obj = dry_run("org/" + "A" * 60 + "-GGUF")
    assert obj["metadata"]["name"] == "a" * 48


@pytest.mark.parametrize("args, code, words", [
    (["--min-replicas", "3", "--max-replicas", "1"], 2, "--min-replicas 3 must not exceed --max-replicas 1"),
    (["--min-replicas", "1"], 2, "--min-replicas needs --max-replicas"),
    (["--replicas", "5", "--max-replicas", "2"], 2, "--replicas 5 must be at most --max-replicas 2"),
    (["--engine", "tgi", "--gpus", "0"], 2, "TGI needs at least one GPU"),
    (["--engine", "tgi", "--quant", "Q4_K_M"], 2, "--quant Q4_K_M picks a GGUF file"),
    (["--engine", "llamacpp", "--quant", "gptq"], 2, "--quant"),
    (["--gpus", "65"], 2, "--gpus"),
    (["--replicas", "-1"], 2, "--replicas"),
    (["--pool", "GPU_pool"], 2, "--pool 'GPU_pool'"),
    (["--alias", "no spaces"], 2, "--alias 'no spaces'"),
    (["--name", "9lives"], 2, "--name '9lives'"),
    (["--engine", "triton"], 2, "--engine"),
    (["--engine", "vllm", "--gpus", "0"], 2, "--gpus 0: vLLM needs at least one GPU; use --engine llamacpp"),
    (["--engine", "sglang", "--quant", "Q4_K_M"], 2, "--quant Q4_K_M picks a GGUF file, which SGLang cannot serve"),
    (["--engine", "vllm", "--quant", "exl2"], 2, "--quant exl2: vLLM takes awq, compressed-tensors, fp8, gptq\n"),
    # (the pinned images: vLLM 0.29.0 has no bitsandbytes, SGLang 0.5.20 no plain marlin)
    (["--engine", "vllm", "--quant", "bitsandbytes"], 2, "--quant bitsandbytes: vLLM takes awq, compressed-tensors, "
                                                         "fp8, gptq\n"),
    (["--engine", "sglang", "--quant", "marlin"], 2, "--quant marlin: SGLang takes awq, compressed-tensors, fp8, "
                                                     "gptq, bitsandbytes\n"),
])
def test_bad_flags_are_one_line_without_a_traceback(args, code, words):
    result = run("deploy", "org/model", "--dry-run", *args)
    assert result.exit_code == code, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    if "--engine" not in words:  # click's own usage errors have a usage line before theirs
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_bad_repo_or_revision_names_the_argument():
    assert "REPO 'nohub'" in run("deploy", "nohub", "--dry-run").output
    result = run("deploy", "a/b@x..y", "--dry-run")
    assert result.exit_code == 2 and "REPO@REVISION 'x..y'" in result.output


@pytest.mark.parametrize("command", ["deploy", "ls", "status", "delete"])
def test_each_command_has_examples_in_its_help(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "Examples:" in result.output and f"modelship {command}" in result.output


# --- rendering -----------------------------------------------------------------------------


def recorded(phase: str, **status) -> dict:
    return {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "smollm2", "namespace": "models", "generation": 1,
                         "creationTimestamp": "2025-06-01T10:30:00Z"},
            "spec": {"model": {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"}, "replicas": 2},
            "status": {"observedGeneration": 1, "phase": phase, **status}}


RESOLVED = {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "revision": "main", "sha": "abcdef0123456789" * 2,
            "shortSha": "abcdef0", "engine": "llamacpp", "format": "gguf", "quantization": "Q4_K_M",
            "modelFile": "smollm2-135m-instruct-q4_k_m.gguf", "totalBytes": 105 * 2 ** 20,
            "files": [{"path": "smollm2-135m-instruct-q4_k_m.gguf", "size": 105 * 2 ** 20}]}
DOWNLOADING = recorded("Downloading", resolved=RESOLVED, download={
    "job": "smollm2-download", "bytesDone": 42 * 2 ** 20, "bytesTotal": 105 * 2 ** 20, "percent": 40,
    "etaSeconds": 200}, conditions=[{"type": "Downloaded", "status": "False", "reason": "Downloading",
                                     "message": "40% of 105.0 MiB", "lastTransitionTime": "2025-06-01T10:31:00Z"}])
FAILED = recorded("Failed", conditions=[
    {"type": "Resolved", "status": "False", "reason": "QuantizationNotFound",
     "message": "no GGUF file matches Q3_K_XS; there is Q4_K_M, Q8_0", "lastTransitionTime": "2025-06-01T10:31:00Z"},
    {"type": "Ready", "status": "False", "reason": "QuantizationNotFound",
     "message": "no GGUF file matches Q3_K_XS; there is Q4_K_M, Q8_0", "lastTransitionTime": "2025-06-01T10:31:00Z"}])
READY = recorded("Ready", resolved=RESOLVED, readyReplicas=2, replicas=2, conditions=[
    {"type": "Ready", "status": "True", "reason": "Ready", "message": "2 of 2 replicas ready",
     "lastTransitionTime": "2025-06-01T10:40:00Z"}],
    endpoint={"url": "http://smollm2.models.svc:8080", "openAIBaseURL": "http://smollm2.models.svc:8080/v1",
              "model": "smollm2"},
    autoscaling={"desiredReplicas": 2, "reason": "ScaledUp", "message": "InFlight 7.5 over target 4"})


def test_recorded_objects_are_valid_statuses():
    for obj in (DOWNLOADING, FAILED, READY):
        api.ModelDeploymentStatus.model_validate(obj["status"])


def test_ls_rows():
    assert render.ls_row(READY, NOW) == ["smollm2", "Ready", "2/2", "llamacpp", "Q4_K_M", "abcdef0", "smollm2",
                                         "1h"]
    assert render.ls_row(FAILED, NOW, namespaced=True)[:4] == ["models", "smollm2", "Failed", "0/2"]
    text = render.to_text(render.ls_table([READY, DOWNLOADING], NOW))
    assert "NAME" in text and "Downloading" in text and "QUANT" in text


def test_status_while_downloading_shows_bytes_rate_and_time_left():
    text = render.to_text(render.status_view(DOWNLOADING))
    assert "42.0 MiB / 105.0 MiB" in text and "40%" in text and "3m 20s left" in text
    assert "322.6 KiB/s" in text and "smollm2-135m-instruct-q4_k_m.gguf  105.0 MiB" in text


def test_status_of_a_failed_one_shows_the_message():
    text = render.to_text(render.status_view(FAILED))
    assert "Failed" in text and "no GGUF file matches Q3_K_XS; there is Q4_K_M, Q8_0" in text
    assert render.failure_message(FAILED).startswith("QuantizationNotFound: no GGUF file")


def test_status_of_a_ready_one_shows_the_endpoint_and_curl():
    text = render.to_text(render.status_view(READY), width=400)
    assert "http://smollm2.models.svc:8080/v1" in text and "2 ready / 2 desired" in text
    assert "curl -s http://smollm2.models.svc:8080/v1/chat/completions" in text
    assert '"model": "smollm2"' in text and "ScaledUp: InFlight 7.5 over target 4" in text
    assert "Download" not in text


def test_ages_and_durations():
    assert [render.age(t, NOW) for t in ("2025-06-01T11:59:15Z", "2025-06-01T11:48:00Z", None)] == ["45s", "12m", "-"]
    assert render.duration(3725) == "1h 2m" and render.duration(None) == "-"


# --- against a stub API --------------------------------------------------------------------


class StubCustom:
    """CustomObjectsApi's calls the commands make, answered from a script of objects."""

    def __init__(self, versions: list[dict | None], exists: bool = False):
        self.versions, self.created, self.exists = list(versions), [], exists

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        current = self.versions.pop(0) if len(self.versions) > 1 else self.versions[0]
        if current is None:
            raise ApiException(status=404, reason="Not Found")
        return current

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        if self.exists:
            raise ApiException(status=409, reason="Conflict")
        self.created.append(body)
        return body

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kwargs):
        if self.versions[0] is None:
            raise ApiException(status=404, reason="Not Found")
        self.versions = [None]

    def list_namespaced_custom_object(self, group, version, namespace, plural):
        return {"items": [v for v in self.versions[:1] if v]}


@pytest.fixture
def stub(monkeypatch):
    def install(versions, exists=False):
        custom = StubCustom(versions, exists)
        kube = common.Kube("models", None)
        monkeypatch.setattr(kube, "custom", lambda: custom, raising=False)
        monkeypatch.setattr(common.Kube, "connect", classmethod(lambda cls, *a: kube))
        monkeypatch.setattr(watch, "POLL_SECONDS", 0)
        return custom
    return install


def test_status_of_a_missing_one_exits_3(stub):
    stub([None])
    result = run("status", "nothere")
    assert result.exit_code == 3 and result.output.strip().splitlines() == [
        "Error: no ModelDeployment 'nothere' in namespace 'models' (see `modelship ls`)"]


def test_delete(stub):
    stub([READY])
    result = run("delete", "smollm2", "--wait")
    assert result.exit_code == 0 and "Deleted ModelDeployment models/smollm2" in result.output
    assert run("delete", "smollm2").exit_code == 3


def test_status_and_ls_print_the_object(stub):
    stub([READY])
    assert yaml.safe_load(run("status", "smollm2", "-o", "yaml").output) == READY
    assert json.loads(run("ls", "-o", "json").output)["items"] == [READY]
    assert "smollm2" in run("ls").output


def test_deploy_wait_follows_to_ready(stub):
    custom = stub([DOWNLOADING, DOWNLOADING, READY])
    result = run("deploy", "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "--name", "smollm2", "--wait")
    assert result.exit_code == 0, result.output
    assert custom.created[0]["metadata"] == {"name": "smollm2", "namespace": "models"}
    assert "smollm2: Downloading" in result.output and "smollm2: Ready" in result.output
    assert "curl -s http://smollm2.models.svc:8080/v1/chat/completions" in result.output


def test_deploy_of_an_existing_name_is_one_line(stub):
    stub([READY], exists=True)
    result = run("deploy", "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "--name", "smollm2")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "--name" in result.output and "modelship delete smollm2" in result.output


def test_wait_times_out_with_exit_4(stub):
    stub([DOWNLOADING])
    result = run("status", "smollm2", "--wait", "--timeout", "0")
    assert result.exit_code == 4 and "not Ready after 0s (phase Downloading)" in result.output


def test_wait_on_a_failed_one_exits_1_with_its_message(stub):
    stub([DOWNLOADING, FAILED])
    result = run("deploy", "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "--quant", "Q3_K_XS", "--name", "smollm2",
                 "--wait")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: smollm2 failed: QuantizationNotFound: no GGUF file matches Q3_K_XS; there is Q4_K_M, Q8_0")


def test_wait_ignores_a_status_of_an_older_generation(stub):
    stale = {**READY, "metadata": {**READY["metadata"], "generation": 2}}
    stub([stale, READY | {"metadata": {**READY["metadata"], "generation": 2},
                          "status": {**READY["status"], "observedGeneration": 2}}])
    assert watch.settled(stale) is None
    assert run("status", "smollm2", "--wait").exit_code == 0


def test_set_reaches_any_spec_field_and_bad_ones_are_one_line():
    from click.testing import CliRunner

    from modelship.cli import main

    out = CliRunner().invoke(main, ["deploy", "org/m-GGUF", "--set", "serving.chatTemplate=chatml", "--set",
                                    "serving.contextLength=2048", "--set", "router.aliases=[a, b]", "--dry-run",
                                    "-o", "json"])
    assert out.exit_code == 0, out.output
    spec = json.loads(out.output)["spec"]
    assert spec["serving"] == {"chatTemplate": "chatml", "contextLength": 2048} and spec["router"]["aliases"] == ["a", "b"]
    for bad, said in ((["--set", "serving"], "write FIELD=VALUE"), (["--set", "serving.nope=1"], "nope"),
                      (["--set", "serving.contextLength=lots"], "contextLength")):
        out = CliRunner().invoke(main, ["deploy", "org/m-GGUF", *bad, "--dry-run"])
        assert out.exit_code == 2 and said in out.output and "Traceback" not in out.output, out.output


def test_the_kubeconfig_is_read_as_kubectl_reads_it(tmp_path):
    """Several files in KUBECONFIG are merged; the context's namespace is the default."""
    from modelship.user.common import Kube

    def config(name: str, port: int, current: bool) -> str:
        return (f"apiVersion: v1\nkind: Config\nclusters: [{{name: c{name}, cluster: {{server: 'https://127.0.0.1:{port}'}}}}]\n"
                f"users: [{{name: u{name}, user: {{token: t}}}}]\n"
                f"contexts: [{{name: {name}, context: {{cluster: c{name}, user: u{name}, namespace: ns-{name}}}}}]\n"
                + (f"current-context: {name}\n" if current else ""))

    (tmp_path / "a").write_text(config("a", 1, True))
    (tmp_path / "b").write_text(config("b", 2, False))
    both = f"{tmp_path / 'a'}:{tmp_path / 'b'}"
    assert Kube.connect(both, "b", None).namespace == "ns-b"
    current = Kube.connect(both, None, None)
    assert (current.namespace, current.api_client.configuration.host) == ("ns-a", "https://127.0.0.1:1")
    assert Kube.connect(both, None, "mine").namespace == "mine"


def test_a_missing_crd_is_named():
    from kubernetes.client.exceptions import ApiException

    from modelship.user.common import api_message

    missing_type = ApiException(status=404, reason="Not Found")
    missing_type.body = '{"kind":"Status","reason":"NotFound","details":{},"message":"the server could not find the requested resource"}'
    assert "CRD installed" in api_message(missing_type)
    missing_object = ApiException(status=404, reason="Not Found")
    missing_object.body = ('{"kind":"Status","reason":"NotFound","details":{"name":"m","group":"modelship.io",'
                           '"kind":"modeldeployments"},"message":"modeldeployments.modelship.io \\"m\\" not found"}')
    assert api_message(missing_object) == 'modeldeployments.modelship.io "m" not found'

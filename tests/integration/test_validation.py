"""Invalid ModelDeployments, sent with real `kubectl apply` to the real API server: each is
refused, and the message says what to fix. The rules live in the generated CRD (OpenAPI
validation and CEL), so this also proves the generated CRD is what the API server enforces."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from ..conftest import wait_for

pytestmark = pytest.mark.integration

BASE = {"model": {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"}}


def md(spec: dict | None = None, name: str = "bad", **top) -> dict:
    return {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": spec if spec is not None else BASE, **top}


def with_(**spec) -> dict:
    return md({**BASE, **spec})


# (case id, manifest, text the API server's message must contain)
INVALID = [
    ("no-model", md({}), "spec.model: Required value"),
    ("repo-not-org-name", md({"model": {"repo": "SmolLM2"}}), "must be a Hub repository as org/name"),
    ("revision-dotdot", md({"model": {"repo": "a/b", "revision": "../main"}}), "must be a branch, tag or commit sha"),
    ("quantization-path", md({"model": {"repo": "a/b", "quantization": "../x.gguf"}}),
     "must be a GGUF quantization tag"),
    ("endpoint-not-http", md({"model": {"repo": "a/b", "endpoint": "ftp://mirror"}}),
     "must be an http:// or https:// URL"),
    ("secret-name", md({"model": {"repo": "a/b", "tokenSecretRef": {"name": "HF_Token"}}}), "must be a Secret name"),
    ("engine-unknown", with_(engine={"type": "vllm"}), 'Unsupported value: "vllm"'),
    ("engine-managed-flag", with_(engine={"type": "llamacpp", "args": ["--port=9000"]}),
     "engine.args must not set -m, --model, --host, --port"),
    ("tgi-managed-flag", with_(engine={"type": "tgi", "args": ["--model-id", "x"]}),
     "engine.args must not set --model-id"),
    ("env-both", with_(engine={"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}),
     "set exactly one of value and valueFrom"),
    ("env-name", with_(engine={"env": [{"name": "1A", "value": "1"}]}), "must be a variable name"),
    ("env-empty-source", with_(engine={"env": [{"name": "A", "valueFrom": {}}]}),
     "set exactly one of secretKeyRef, configMapKeyRef and fieldRef"),
    ("env-secret-name", with_(engine={"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "My_S",
                                                                                          "key": "k"}}}]}),
     "must be a Secret or ConfigMap name"),
    ("access-mode-once-pod", with_(storage={"accessMode": "ReadWriteOncePod"}),
     'Unsupported value: "ReadWriteOncePod"'),
    ("tgi-with-gguf-quant", md({"model": {"repo": "a/b", "quantization": "Q4_K_M"}, "engine": {"type": "tgi"}}),
     "model.quantization picks a GGUF file, which TGI cannot serve"),
    ("tgi-without-gpus", with_(engine={"type": "tgi"}, gpus=0), "TGI needs at least one GPU"),
    ("tgi-settings-on-llamacpp", with_(engine={"type": "llamacpp"}, serving={"dtype": "bfloat16"}),
     "are TGI settings"),
    ("llamacpp-settings-on-tgi", with_(engine={"type": "tgi"}, serving={"parallel": 4}),
     "are llama.cpp settings, not TGI's"),
    ("gpu-layers-without-gpus", with_(serving={"gpuLayers": 20}), "serving.gpuLayers offloads layers to a GPU"),
    ("input-over-total", with_(serving={"maxInputTokens": 4096, "maxTotalTokens": 2048}),
     "serving.maxInputTokens must be less than serving.maxTotalTokens"),
    ("temperature-range", with_(serving={"generation": {"temperature": 3}}), "should be less than or equal to 2"),
    ("replicas-negative", with_(replicas=-1), "should be greater than or equal to 0"),
    ("replicas-above-max", with_(replicas=5, maxReplicas=2), "replicas must be at most maxReplicas"),
    ("min-above-max", with_(minReplicas=3, maxReplicas=2, replicas=3), "minReplicas must not exceed maxReplicas"),
    ("gpus-in-resources", with_(resources={"limits": {"nvidia.com/gpu": 1}}),
     "set GPUs with spec.gpus, not resources.limits"),
    ("size-not-quantity", with_(storage={"size": "ten gigs"}), "must be a quantity such as 20Gi"),
    ("access-mode", with_(storage={"accessMode": "ReadWriteAlways"}), 'Unsupported value: "ReadWriteAlways"'),
    ("existing-claim-and-size", with_(storage={"existingClaim": "weights", "size": "10Gi"}),
     "storage.existingClaim uses a volume that exists already"),
    ("pool-name", with_(pool="GPU Pool"), "must be a pool name"),
    ("alias-twice", with_(router={"aliases": ["smol", "smol"]}), 'Duplicate value: "smol"'),
    ("alias-and-task", with_(router={"aliases": ["chat"], "tasks": ["chat"]}),
     "a name cannot be both an alias and a task"),
    ("strategy-unknown", with_(router={"loadBalancing": {"strategy": "random"}}), 'Unsupported value: "random"'),
    ("fallback-to-itself", with_(router={"fallback": ["bad"]}), "spec.router.fallback must name other"),
    ("name-too-long", md(name="m" * 49), "be at most 48 characters"),
    ("name-starts-with-digit", md(name="1smol"), "must start with a lower-case letter"),
    ("unknown-field", with_(replica=2), 'unknown field "spec.replica"'),
]


@pytest.mark.parametrize("manifest,expected", [pytest.param(m, e, id=i) for i, m, e in INVALID])
def test_invalid_model_deployment_is_refused_with_a_message(cluster, crd_installed, manifest, expected):
    proc = subprocess.run([cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "apply", "-n", "default",
                           "-f", "-"], input=yaml.safe_dump(manifest), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0, f"accepted: {proc.stdout}"
    assert expected in proc.stderr, proc.stderr
    assert "modelship" not in cluster.kubectl("get", "md", "-n", "default", "-o", "name")


def test_valid_model_deployment_is_defaulted_by_the_api_server(cluster, crd_installed, namespace):
    cluster.apply(md(name="good"), namespace)
    import json

    spec = json.loads(cluster.kubectl("get", "md", "good", "-n", namespace, "-o", "json"))["spec"]
    assert spec["model"]["revision"] == "main" and spec["engine"] == {"type": "auto"}
    assert spec["replicas"] == 1 and spec["storage"]["accessMode"] == "ReadWriteOnce"


def test_storage_class_and_access_mode_cannot_change(cluster, crd_installed, namespace):
    cluster.apply(with_(storage={"storageClassName": "modelship-local"}) | {"metadata": {"name": "pinned"}},
                  namespace)
    changed = with_(storage={"storageClassName": "other"}) | {"metadata": {"name": "pinned"}}
    proc = subprocess.run([cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "apply", "-n", namespace,
                           "-f", "-"], input=yaml.safe_dump(changed), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "storage.storageClassName cannot be set, changed or removed" in proc.stderr, \
        proc.stderr
    changed = with_(storage={"storageClassName": "modelship-local", "accessMode": "ReadWriteMany"}) | {
        "metadata": {"name": "pinned"}}
    proc = subprocess.run([cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "apply", "-n", namespace,
                           "-f", "-"], input=yaml.safe_dump(changed), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "storage.accessMode cannot change" in proc.stderr, proc.stderr


def test_kubectl_explain_reads_the_descriptions(cluster, crd_installed):
    # kubectl explain reads the OpenAPI document, which the API server publishes a while after
    # the CRD is Established: until then explain fails (it does not know the resource).
    out = wait_for(lambda: cluster.kubectl("explain", "modeldeployment.spec.model"), 60,
                   "the CRD's OpenAPI document to be published (kubectl explain to know the resource)")
    assert "Hub repository, as `org/name`" in out and "tokenSecretRef" in out
    assert "Default: `main`" in cluster.kubectl("explain", "md.spec.model.revision")

"""Issue 19, Security, on the test bed: everything modelship runs is admitted in a namespace
that enforces the `restricted` Pod Security Standard, and a planted Hub token (and the
router's API keys) appear nowhere they could be read.

One scenario serves both checks (deploying through the real operator is the slow part): a
namespace labelled `pod-security.kubernetes.io/enforce: restricted`; in it the chart's operator
and router (with API keys); a gated llama.cpp model downloaded with the token by a real Job
and served by a real llama-server on the local node, answering through the router; a TGI
model on a kwok GPU pool (admitted and scheduled; kwok runs no container)."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import yaml
from modelship_testbed.config import LOCAL_NODE_NAME

from ..conftest import wait_for
from .conftest import TINY_SHA, md_status, render, seed_volume, wait_phase

pytestmark = [pytest.mark.integration, pytest.mark.localnode, pytest.mark.slow]

TOKEN = "hf_planted" + uuid.uuid4().hex  # the Hub token: must appear nowhere
API_KEY, WRONG_KEY = "sk-router-" + uuid.uuid4().hex, "sk-wrong-" + uuid.uuid4().hex
CONTROL = "control-" + uuid.uuid4().hex  # a literal env value: the search must find it
GATED = "hub-test/security-GGUF"
GATED_SHA = "7" * 40
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def restrict(cluster, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest", "--overwrite")
    refused = cluster.kubectl("run", "root-probe", "-n", namespace, "--image=busybox", "--restart=Never",
                              check=False)  # the plugin is on: an unrestricted pod is refused
    assert 'violates PodSecurity "restricted:latest"' in refused, refused


def models() -> list[dict]:
    smol = {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "smol"},
            "spec": {"model": {"repo": GATED, "quantization": "Q4_1", "tokenSecretRef": {"name": "hf-token"}},
                     "pool": "local", "engine": {"env": [{"name": "MODELSHIP_CONTROL", "value": CONTROL}]},
                     "serving": {"contextLength": 1024, "chatTemplate": "chatml", "threads": 1}}}
    tgi = {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "tgi"},
           "spec": {"model": {"repo": "modelship-test/tiny-llama", "tokenSecretRef": {"name": "hf-token"}},
                    "pool": "gpu"}}
    return [smol, tgi]


def install_router(cluster, namespace: str) -> tuple[str, str]:
    """The chart's router, one replica on the local node, asking for API keys: its manifest and URL."""
    cluster.kubectl("create", "secret", "generic", "router-keys", "-n", namespace,
                    f"--from-literal=keys={yaml.safe_dump({'team-a': API_KEY})}")
    release = f"r{uuid.uuid4().hex[:6]}"
    manifest = render(release, namespace, "operator.enabled=false", "crds.enabled=false", f"namespaces={{{namespace}}}",
                      "router.replicas=1", "router.allowCidrs={127.0.0.0/8}", "router.apiKeys.secretName=router-keys",
                      "router.resources.requests.cpu=10m", "router.resources.requests.memory=64Mi",
                      # on the node whose pods really run: scheduled on the test's own kwok node, it
                      # was "Ready" there and every connection to it was refused
                      f"router.nodeSelector.kubernetes\\.io/hostname={LOCAL_NODE_NAME}")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)

    def ready_ip():
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l",
                                          f"app.kubernetes.io/instance={release}", "-o", "json"))["items"]
        return next((p["status"]["podIP"] for p in pods if any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])), None)

    ip = wait_for(ready_ip, 90, "the router pod to be Ready",
                  lambda: cluster.kubectl("get", "rs,pods,events", "-n", namespace, check=False))
    return manifest, f"http://{ip}:8000"


def ask(router: str, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{router}/v1/chat/completions", headers=headers, timeout=120, json={
        "model": "smol", "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})


def refusals(cluster, namespace: str) -> str:
    """Events of pods refused at admission: a PodSecurity refusal is a FailedCreate on the
    ReplicaSet or Job that asked (the ModelDeployment never sees it)."""
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
    return "\n".join(f"{e['involvedObject']['kind']}/{e['involvedObject']['name']}: {e['message']}"
                     for e in events if e.get("reason") == "FailedCreate")


def assert_every_pod_admitted(cluster, namespace: str) -> None:
    assert not refusals(cluster, namespace), refusals(cluster, namespace)
    for rs in json.loads(cluster.kubectl("get", "rs", "-n", namespace, "-o", "json"))["items"]:
        want, have = rs["spec"].get("replicas", 0), rs["status"].get("replicas", 0)
        assert have == want, f"ReplicaSet {rs['metadata']['name']}: {have} of {want} pods"
    jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json"))["items"]
    assert len(jobs) == 2 and all(j["status"].get("succeeded") == 1 for j in jobs), [j["status"] for j in jobs]
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
    kinds = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods}
    assert {"operator", "router", "download", "server"} <= kinds, kinds
    gpu = [p for p in pods if p["metadata"]["labels"].get("modelship.io/engine") == "tgi"]
    assert gpu and gpu[0]["spec"].get("nodeName"), "the TGI pod was not scheduled"


def secret_refs_only(pods: list[dict]) -> list[str]:
    """Env entries that carry HF_TOKEN other than through a secretKeyRef."""
    return [f"{p['metadata']['name']}: {e}" for p in pods for c in p["spec"]["containers"] for e in c.get("env") or []
            if e["name"] == "HF_TOKEN" and "secretKeyRef" not in (e.get("valueFrom") or {})]


def everything_readable(cluster, namespace: str, operator, router: str) -> dict[str, str]:
    """What anyone with read access to the cluster, the logs or the metrics could read."""
    k = cluster.kubectl
    pods = json.loads(k("get", "pods", "-n", namespace, "-o", "json"))["items"]
    jobs = k("get", "jobs", "-n", namespace, "-o", "name").split()
    servers = [p["metadata"]["name"] for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component")
               == "server"]
    return {
        "operator log": operator.log(),
        "router log": k("logs", "-n", namespace, "-l", "app.kubernetes.io/component=router", "--tail=-1"),
        "router metrics": httpx.get(f"{router}/metrics", timeout=10).text,
        "download Job logs": "".join(k("logs", "-n", namespace, j, check=False) for j in jobs),
        "engine logs": "".join(k("logs", "-n", namespace, p, check=False) for p in servers),
        "events": k("get", "events", "-A", "-o", "yaml"),
        "ModelDeployments": k("get", "md", "-A", "-o", "yaml"),
        "pod specs": k("get", "pods", "-A", "-o", "yaml"),
        "workloads": k("get", "deployments,replicasets,jobs", "-n", namespace, "-o", "yaml"),
        "ConfigMaps": k("get", "configmaps", "-A", "-o", "yaml"),
    }


# What each source must hold, so that an empty or wrong source cannot pass the search.
EXPECTED = {"operator log": "Created Deployment smol", "router log": '"status":401',
            "router metrics": "smol", "download Job logs": GGUF, "engine logs": "llama",
            "events": "Created Job smol-fetch-", "ModelDeployments": GATED, "pod specs": CONTROL,
            "workloads": CONTROL, "ConfigMaps": "kube-root-ca.crt"}


def test_restricted_namespace_admits_every_pod_and_no_secret_leaks(cluster, namespace, operator, fake_hub,
                                                                   kwok_pools):
    from modelship_testbed.binaries import smollm2_gguf
    from modelship_testbed.hub_fake import FakeRepo

    restrict(cluster, namespace)
    fake_hub.add_repo(FakeRepo(GATED, {GATED_SHA: {GGUF: smollm2_gguf().read_bytes()}}, {"main": GATED_SHA},
                               gated=True, tokens={TOKEN}))
    cluster.kubectl("create", "secret", "generic", "hf-token", f"--from-literal=token={TOKEN}", "-n", namespace)
    operator.start(pools=kwok_pools)
    manifest, router = install_router(cluster, namespace)
    try:
        cluster.apply(models(), namespace)
        seed_volume(cluster, namespace, "tgi-weights", "modelship-test/tiny-llama", TINY_SHA,
                    {"config.json": b"{}", "model.safetensors": b"abc"})  # (the TGI's download checks them)
        wait_phase(cluster, operator, "smol", "Ready", timeout=240)
        wait_phase(cluster, operator, "tgi", "Ready", timeout=120)
        wait_for(lambda: ask(router, API_KEY).status_code == 200, 180, "the router to serve smol",
                 lambda: cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False))
        assert [ask(router, key).status_code for key in (None, WRONG_KEY)] == [401, 401]
        assert "paris" in ask(router, API_KEY).json()["choices"][0]["message"]["content"].lower()
        assert md_status(cluster, namespace, "smol")["resolved"]["sha"] == GATED_SHA  # resolved with the token
        assert_every_pod_admitted(cluster, namespace)

        seen = everything_readable(cluster, namespace, operator, router)
        missing = {where: want for where, want in EXPECTED.items() if want not in seen[where]}
        assert not missing, f"sources without what they must hold (the search would prove nothing): {missing}"
        for secret in (TOKEN, API_KEY, WRONG_KEY):
            leaks = [where for where, text in seen.items() if secret in text]
            assert not leaks, f"{secret[:12]}... found in: {leaks}"
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json"))["items"]
        assert not secret_refs_only(pods)
        assert sum("secretKeyRef" in json.dumps(c.get("env")) for p in pods for c in p["spec"]["containers"]) >= 2
    finally:
        cluster.kubectl("delete", "-n", namespace, "-f", "-", "--ignore-not-found", "--wait=false", stdin=manifest,
                        check=False)

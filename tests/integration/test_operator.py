"""The operator on the test bed: the real `modelship operator` process against the real API
server, its children scheduled on kwok pools and on the local node (where pods really run)."""

from __future__ import annotations

import json
import signal
import subprocess
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from ..conftest import wait_for
from .conftest import (SMOLLM2_SHA, TINY_SHA, children, claim_path, condition, md_status, preload_claim,
                       seed_volume, wait_phase)

pytestmark = [pytest.mark.integration]


def smollm2(name: str = "smollm2", **spec) -> dict:
    return {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "quantization": "Q4_1"},
                     "pool": "local", "storage": {"existingClaim": "preloaded"},
                     "serving": {"contextLength": 2048, "chatTemplate": "chatml", "threads": 1}, **spec}}


def tiny(name: str, repo: str = "modelship-test/tiny-llama", **spec) -> dict:
    return {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"repo": repo}, **spec}}


def get(cluster, kind: str, name: str, ns: str) -> dict:
    return json.loads(cluster.kubectl("get", kind, name, "-n", ns, "-o", "json"))


def node_labels(cluster, node: str) -> dict:
    return json.loads(cluster.kubectl("get", "node", node, "-o", "json"))["metadata"]["labels"]


def serving_pods(cluster, ns: str, name: str) -> list[dict]:
    return json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l",
                                      f"modelship.io/deployment={name},app.kubernetes.io/component=server",
                                      "-o", "json"))["items"]


def ledger(cluster, ns: str, claim: str) -> list[str]:
    """The snapshots a volume's ledger names (annotations on its claim)."""
    notes = get(cluster, "pvc", claim, ns)["metadata"].get("annotations") or {}
    return sorted(v for k, v in notes.items() if k.startswith("snapshot.modelship.io/"))


def job_names(cluster, ns: str) -> list[str]:
    return cluster.kubectl("get", "jobs", "-n", ns, "-o", "name").split()


def call_endpoint(cluster, status: dict) -> str:
    """POST a chat completion to the endpoint the status names. The test bed has no cluster DNS
    and no kube-proxy, so the Service name in the URL is resolved the way a router does it:
    through the Service's EndpointSlices, to a ready pod address and its port."""
    from modelship_testbed.demo import endpoint_address

    ep = status["endpoint"]
    base = endpoint_address(status, run=cluster.kubectl)
    r = httpx.post(f"{base}{urlparse(ep['openAIBaseURL']).path}/chat/completions", timeout=120,
                   json={"model": ep["model"], "max_tokens": 32, "temperature": 0,
                         "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"]


@pytest.mark.localnode
@pytest.mark.slow
def test_llamacpp_with_weights_on_the_volume_becomes_ready_and_answers(cluster, namespace, local_node, operator):
    preload_claim(cluster, namespace)
    operator.start()
    manifest = yaml.safe_dump(smollm2())
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)
    # kubectl wait on the Ready condition, as a user (or a pipeline) would.
    cluster.kubectl("wait", "--for=condition=Ready", "md/smollm2", "-n", namespace, "--timeout=180s")
    status = md_status(cluster, namespace, "smollm2")
    assert status["phase"] == "Ready" and status["observedGeneration"] == 1
    assert status["resolved"]["sha"] == SMOLLM2_SHA and status["resolved"]["engine"] == "llamacpp"
    assert status["readyReplicas"] == 1 and status["download"]["percent"] == 100
    assert status["endpoint"]["openAIBaseURL"] == f"http://smollm2.{namespace}.svc/v1"
    for type_ in ("Resolved", "Downloaded", "Available", "Ready"):
        c = condition(status, type_)
        assert c["status"] == "True" and c["observedGeneration"] == 1 and c["reason"], c
    assert "paris" in call_endpoint(cluster, status).lower()
    pod = serving_pods(cluster, namespace, "smollm2")[0]
    assert pod["spec"]["nodeName"] == local_node
    args = pod["spec"]["containers"][0]["args"]
    assert args[args.index("-m") + 1].endswith(f"/snapshots/{SMOLLM2_SHA}/SmolLM2-135M-Instruct.Q4_1.gguf")
    # GitOps: the operator never writes what the user applied.
    diff = subprocess.run([cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "diff", "-n", namespace,
                           "-f", "-"], input=manifest, capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    meta = get(cluster, "md", "smollm2", namespace)["metadata"]
    assert not meta.get("finalizers") and not any(k.startswith("modelship.io") for k in meta.get("annotations", {}))
    # The printer columns, and the Events the operator posted.
    row = cluster.kubectl("get", "md", "smollm2", "-n", namespace).splitlines()
    assert row[0].split()[:6] == ["NAME", "ENGINE", "READY", "REPLICAS", "PHASE", "REVISION"]
    assert row[1].split()[1:6] == ["llamacpp", "1", "1", "Ready", SMOLLM2_SHA[:7]]
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.kind=ModelDeployment")
    # (on a claim of the user's, the Job is named for what it does: the ModelDeployments on it share it)
    assert "Created Deployment smollm2" in events and "Created Job modelship-fetch-" in events
    # Level-based: a child changed by hand is put back (here a field that does not restart pods).
    cluster.kubectl("patch", "deployment", "smollm2", "-n", namespace, "-p", '{"spec":{"revisionHistoryLimit":9}}')
    wait_for(lambda: get(cluster, "deployment", "smollm2", namespace)["spec"]["revisionHistoryLimit"] == 3, 30,
             "the operator to put the Deployment back")
    # The operator logs its update after the API server took it, so the line may trail the object.
    wait_for(lambda: "Updated Deployment smollm2" in operator.log(), 10, "the operator to log its update")
    operator_log = operator.log()
    assert operator_log.count("Updated Deployment smollm2") == 1, operator_log  # no spurious re-applies
    assert "Updated Service" not in operator_log, operator_log
    assert httpx.get(operator.health_url, timeout=5).status_code == 200
    # Putting the Deployment back changed its spec: until its controller has seen that, the
    # ModelDeployment is Starting again for a moment (a slow machine sees it). The gauge says
    # what the status says: the operator records the phase as it writes the status.
    wait_for(lambda: md_status(cluster, namespace, "smollm2").get("phase") == "Ready", 60,
             "the ModelDeployment to be Ready again", operator.metrics)
    metrics = operator.metrics()
    assert 'modelship_modeldeployments{phase="Ready"} 1.0' in metrics
    assert 'modelship_reconciles_total{result="success"}' in metrics


@pytest.mark.localnode
def test_pools_children_rollout_scale_and_delete(cluster, namespace, operator, kwok_pools):
    """TGI lands on the GPU pool, llama.cpp on the CPU pool; the children have the right shape;
    a spec change rolls the Deployment; `kubectl scale` works; delete removes every child."""
    operator.start(pools=kwok_pools)
    cluster.apply(tiny("tgi-model"), namespace)
    cluster.apply(tiny("cpp-model", repo="modelship-test/tiny-llama-GGUF"), namespace)
    # The download Jobs check the weights on the new volumes; put them there (the Job retries).
    seed_volume(cluster, namespace, "tgi-model-weights", "modelship-test/tiny-llama", TINY_SHA,
                {"config.json": b"{}", "model.safetensors": b"abc"})
    seed_volume(cluster, namespace, "cpp-model-weights", "modelship-test/tiny-llama-GGUF", TINY_SHA,
                {"tiny.Q4_K_M.gguf": b"gguf"})
    wait_phase(cluster, operator, "tgi-model", "Ready", timeout=120)
    wait_phase(cluster, operator, "cpp-model", "Ready", timeout=120)

    tgi_pod = serving_pods(cluster, namespace, "tgi-model")[0]
    assert node_labels(cluster, tgi_pod["spec"]["nodeName"])["modelship.io/pool"] == "gpu"
    c = tgi_pod["spec"]["containers"][0]
    assert c["image"].startswith("ghcr.io/huggingface/text-generation-inference")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cpp_pod = serving_pods(cluster, namespace, "cpp-model")[0]
    assert node_labels(cluster, cpp_pod["spec"]["nodeName"])["modelship.io/pool"] == "cpu"
    assert "nvidia.com/gpu" not in (cpp_pod["spec"]["containers"][0].get("resources", {}).get("limits") or {})

    kids = children(cluster, namespace, "tgi-model")
    assert kids["deployments"] == ["tgi-model"] and kids["services"] == ["tgi-model"]
    assert kids["persistentvolumeclaims"] == ["tgi-model-weights"] and len(kids["jobs"]) == 1
    pvc = get(cluster, "pvc", "tgi-model-weights", namespace)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"  # 5 bytes + the 1Gi minimum margin, rounded
    assert pvc["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"

    # A spec change rolls the serving pods (a new pod template hash) and Ready follows.
    dep = get(cluster, "deployment", "cpp-model", namespace)
    old_hash = dep["spec"]["template"]["metadata"]["annotations"]["modelship.io/spec-hash"]
    cluster.kubectl("patch", "md", "cpp-model", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"serving": {"parallel": 2}}}))
    wait_for(lambda: md_status(cluster, namespace, "cpp-model").get("observedGeneration") == 2, 30,
             "the operator to observe generation 2")
    dep = get(cluster, "deployment", "cpp-model", namespace)
    assert dep["spec"]["template"]["metadata"]["annotations"]["modelship.io/spec-hash"] != old_hash
    assert "--parallel" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    wait_phase(cluster, operator, "cpp-model", "Ready", timeout=60)

    # The scale subresource: kubectl scale on the ModelDeployment reaches the Deployment.
    cluster.kubectl("scale", "md/cpp-model", "-n", namespace, "--replicas=2")
    wait_for(lambda: get(cluster, "deployment", "cpp-model", namespace)["spec"]["replicas"] == 2, 30,
             "the Deployment to have 2 replicas")
    # Until the operator has written a status for the scaled spec, Ready is the old one's.
    wait_for(lambda: md_status(cluster, namespace, "cpp-model").get("observedGeneration") == 3, 30,
             "the operator to observe generation 3")
    st = wait_phase(cluster, operator, "cpp-model", "Ready", timeout=60)
    assert st["readyReplicas"] == 2 and st["selector"] == \
        "modelship.io/deployment=cpp-model,app.kubernetes.io/component=server"

    # Delete: the garbage collector removes every child through the owner references.
    cluster.kubectl("delete", "md", "tgi-model", "cpp-model", "-n", namespace, "--wait=true", "--timeout=60s")
    wait_for(lambda: not any(children(cluster, namespace, "tgi-model").values())
             and not any(children(cluster, namespace, "cpp-model").values()), 60, "every child to be gone",
             lambda: json.dumps(children(cluster, namespace, "tgi-model")))


@pytest.mark.localnode
def test_unusable_spec_gets_a_condition_and_no_children(cluster, namespace, operator):
    operator.start(config={"resyncSeconds": 3600})  # so that only events cause reconciles here
    cluster.apply(tiny("nopool", pool="nope"), namespace)
    cluster.apply(tiny("gpus-on-cpu", repo="modelship-test/tiny-llama-GGUF", pool="cpu", gpus=1), namespace)
    cluster.apply(tiny("unknown-repo", repo="modelship-test/absent"), namespace)
    st = wait_phase(cluster, operator, "nopool", "Failed")
    ready = condition(st, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "PoolNotFound"
    assert "known pools: cpu, gpu, local" in ready["message"]
    st = wait_phase(cluster, operator, "gpus-on-cpu", "Failed")
    assert condition(st, "Ready")["reason"] == "PoolHasNoGPUs"
    st = wait_phase(cluster, operator, "unknown-repo", "Failed")
    assert condition(st, "Resolved")["reason"] == "RepoNotFound"
    for name in ("nopool", "gpus-on-cpu", "unknown-repo"):
        assert not any(children(cluster, namespace, name).values()), name
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "type=Warning")
    assert "PoolNotFound" in events
    # No retry storm: a permanent error is not retried until something changes.
    import time

    lines = lambda: [l for l in operator.metrics().splitlines() if l.startswith("modelship_reconciles_total")]

    def quiet_for_2s():  # the echoes of the last status writes have been reconciled
        before = lines()
        time.sleep(2)
        return before if before == lines() else None

    # (a retry storm faster than that never settles, and fails here)
    first = wait_for(quiet_for_2s, 60, "the reconcile counters to stay the same for 2 s")
    time.sleep(3)
    assert lines() == first, (first, lines())
    # Fixing the spec recovers.
    cluster.kubectl("patch", "md", "nopool", "-n", namespace, "--type=json",
                    "-p", json.dumps([{"op": "remove", "path": "/spec/pool"}]))
    wait_for(lambda: condition(md_status(cluster, namespace, "nopool"), "Ready").get("reason") != "PoolNotFound",
             30, "the fixed ModelDeployment to move on")


@pytest.mark.localnode
@pytest.mark.slow
def test_operator_killed_mid_reconcile_converges_without_duplicates(cluster, namespace, local_node,
                                                                   local_operator):
    operator = local_operator  # (a process of the test's own: killed at a fail point)
    preload_claim(cluster, namespace)
    # The failpoint makes the operator exit abruptly (like SIGKILL) right after its first
    # child write, in the middle of a reconcile.
    operator.start(MODELSHIP_FAILPOINT_EXIT_AFTER_WRITES="1")
    cluster.apply(smollm2(), namespace)
    wait_for(lambda: operator.proc.poll() is not None, 30, "the operator to die at the failpoint")
    assert operator.proc.returncode == 137
    assert "failpoint" in operator.log()
    half = children(cluster, namespace, "smollm2")
    # Cut mid-reconcile: a child was written, the serving Deployment (the last step) was not.
    # (The Service is applied in its own lane beside the Job, so the write that was already on
    # the wire in the other lane when the process died may have landed too: one or two children.)
    assert 1 <= sum(len(v) for v in half.values()) <= 2 and not half["deployments"], half
    operator.start()
    wait_phase(cluster, operator, "smollm2", "Ready", timeout=180)
    kids = children(cluster, namespace, "smollm2")
    assert kids["deployments"] == ["smollm2"] and kids["services"] == ["smollm2"] and len(kids["jobs"]) == 1, kids
    assert len(serving_pods(cluster, namespace, "smollm2")) == 1
    # A plain SIGTERM stops it cleanly, and a third start changes nothing that exists.
    assert operator.stop(signal.SIGTERM) == 0
    uids = {k: get(cluster, "deployment", "smollm2", namespace)["metadata"]["resourceVersion"] for k in ("d",)}
    operator.start()
    # The phase gauge is set at the end of a reconcile: once it says Ready, the new operator has
    # looked at the ModelDeployment and written whatever it was going to write.
    wait_for(lambda: 'modelship_modeldeployments{phase="Ready"} 1.0' in operator.metrics(), 60,
             "the restarted operator to reconcile smollm2", lambda: operator.log()[-3000:])
    assert get(cluster, "deployment", "smollm2", namespace)["metadata"]["resourceVersion"] == uids["d"]
    assert md_status(cluster, namespace, "smollm2")["phase"] == "Ready"


def test_refusals_and_foreign_objects_become_conditions(cluster, namespace, operator):
    """A child the API server refuses (here: a ResourceQuota on storage) and an object of the
    same name that the operator did not create both end as a condition, not a retry loop."""
    cluster.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "tiny-storage"},
                   "spec": {"hard": {"requests.storage": "1Mi"}}}, namespace)
    cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken"},
                   "spec": {"selector": {"app": "mine"}, "ports": [{"port": 80}]}}, namespace)
    operator.start(config={"resyncSeconds": 3600})
    cluster.apply(tiny("quota"), namespace)
    cluster.apply(tiny("taken"), namespace)
    st = wait_phase(cluster, operator, "quota", "Failed")
    ready = condition(st, "Ready")
    assert ready["reason"] == "ApplyRejected", ready
    assert "PersistentVolumeClaim quota-weights was refused by the API server" in ready["message"]
    assert "exceeded quota" in ready["message"]
    st = wait_phase(cluster, operator, "taken", "Failed")
    assert condition(st, "Ready")["reason"] == "ResourceConflict"
    svc = get(cluster, "service", "taken", namespace)
    assert svc["spec"]["selector"] == {"app": "mine"} and not svc["metadata"].get("ownerReferences")
    # one made while the operator runs: its watch of Services (whoever made them) tells it
    cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "late"},
                   "spec": {"selector": {"app": "mine"}, "ports": [{"port": 80}]}}, namespace)
    cluster.apply(tiny("late"), namespace)
    st = wait_phase(cluster, operator, "late", "Failed")
    assert condition(st, "Ready")["reason"] == "ResourceConflict" and "Service late" in condition(st, "Ready")["message"]
    svc = get(cluster, "service", "late", namespace)
    assert not (svc["metadata"].get("labels") or {}) and not svc["metadata"].get("ownerReferences")
    warnings = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", "type=Warning,reason=ApplyRejected",
                               "-o", "name")
    assert len(warnings.split()) == 1


@pytest.mark.localnode
@pytest.mark.slow
def test_resolves_on_a_hub_downloads_with_progress_then_serves(cluster, namespace, local_node, operator, fake_hub):
    """Resolved on a Hub (the fake one, on loopback), downloaded by the Job with progress in
    status, verified on the volume, then Ready and answering."""
    import hashlib
    import time

    from modelship_testbed.binaries import smollm2_gguf
    from modelship_testbed.hub_fake import FakeRepo

    data = smollm2_gguf().read_bytes()
    sha = "5" * 40
    fake_hub.add_repo(FakeRepo("hub-test/SmolLM2-GGUF", {sha: {"README.md": b"# SmolLM2",
                                                               "SmolLM2-135M-Instruct.Q4_1.gguf": data,
                                                               "SmolLM2-135M-Instruct.Q8_0.gguf": b"x" * 1000}},
                               {"main": sha}))
    # ~15 s for the 98 MB file (1,500 pieces of 64 KiB): several of the operator's 3 s requeues
    # fall inside the download, so status shows progress with an ETA on any machine
    fake_hub.chunk_delay = 0.01
    try:
        operator.start()
        manifest = smollm2("hubsmol")
        manifest["spec"]["model"] = {"repo": "hub-test/SmolLM2-GGUF", "quantization": "q4_1"}
        del manifest["spec"]["storage"]
        cluster.apply(manifest, namespace)
        seen: list[dict] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = md_status(cluster, namespace, "hubsmol")
            if st.get("phase") == "Downloading":
                seen.append(st["download"])
            if st.get("phase") in ("Starting", "Ready", "Failed"):
                break
            time.sleep(0.3)
        assert st.get("phase") != "Failed", st
        assert st["resolved"]["sha"] == sha and st["resolved"]["modelFile"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert st["resolved"]["files"] == [{"path": "SmolLM2-135M-Instruct.Q4_1.gguf", "size": len(data),
                                            "sha256": hashlib.sha256(data).hexdigest()}]
        partial = [d for d in seen if 0 < d["bytesDone"] < d["bytesTotal"]]
        assert partial, f"no progress seen while downloading: {seen}"
        assert any("etaSeconds" in d for d in partial), partial
        cluster.kubectl("wait", "--for=condition=Ready", "md/hubsmol", "-n", namespace, "--timeout=120s")
        st = md_status(cluster, namespace, "hubsmol")
        assert st["download"]["percent"] == 100 and condition(st, "Downloaded")["status"] == "True"
        assert "paris" in call_endpoint(cluster, st).lower()
        assert fake_hub.served["SmolLM2-135M-Instruct.Q4_1.gguf"] == len(data)  # downloaded once
    finally:
        fake_hub.chunk_delay = 0.0


TOKEN = "hf_leakcheck_5f3a9c0d2e"


@pytest.mark.localnode
def test_gated_model_needs_its_token_secret_and_the_token_never_leaks(cluster, namespace, operator, fake_hub,
                                                                      kwok_pools):
    from modelship_testbed.hub_fake import FakeRepo

    fake_hub.add_repo(FakeRepo("hub-test/gated-GGUF", {"6" * 40: {"m-Q4_K_M.gguf": b"gated weights"}},
                               {"main": "6" * 40}, gated=True, tokens={TOKEN}))
    cluster.kubectl("create", "secret", "generic", "hf-token", f"--from-literal=token={TOKEN}", "-n", namespace)
    operator.start(pools=kwok_pools)
    cluster.apply(tiny("no-token", repo="hub-test/gated-GGUF"), namespace)
    cluster.apply(tiny("with-token", repo="hub-test/gated-GGUF") | {"spec": {
        "model": {"repo": "hub-test/gated-GGUF", "tokenSecretRef": {"name": "hf-token"}}}}, namespace)
    st = wait_phase(cluster, operator, "no-token", "Failed")
    assert condition(st, "Resolved")["reason"] == "GatedRepo"
    assert "kubectl create secret generic" in condition(st, "Resolved")["message"]
    wait_phase(cluster, operator, "with-token", "Ready", timeout=120)  # downloaded with the token, served
    job = children(cluster, namespace, "with-token")["jobs"][0]
    seen = [cluster.kubectl("get", "md,jobs,pods,deployments,services,pvc", "-n", namespace, "-o", "yaml"),
            cluster.kubectl("get", "events", "-n", namespace, "-o", "yaml"),
            cluster.kubectl("logs", f"job/{job}", "-n", namespace, check=False),
            operator.log(), operator.metrics()]
    assert all(TOKEN not in text for text in seen)
    env = get(cluster, "job", job, namespace)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in env


@pytest.mark.localnode
def test_follow_rolls_to_the_new_commit_of_a_branch_and_says_so(cluster, namespace, operator, fake_hub, kwok_pools):
    from modelship_testbed.hub_fake import FakeRepo

    old, new = "7" * 40, "8" * 40
    repo = fake_hub.add_repo(FakeRepo("hub-test/follow-GGUF", {old: {"m-Q4_K_M.gguf": b"v1"},
                                                              new: {"m-Q4_K_M.gguf": b"v2 weights"}},
                                      {"main": old}))
    operator.start(pools=kwok_pools, config={"followIntervalSeconds": 5})
    cluster.apply(tiny("pinned", repo="hub-test/follow-GGUF"), namespace)
    cluster.apply(tiny("follower", repo="hub-test/follow-GGUF") | {"spec": {
        # (ReadWriteMany: the Jobs run on the local node, where files really land, rather than
        # next to the serving pods on a kwok node, where nothing really runs)
        "model": {"repo": "hub-test/follow-GGUF", "revisionPolicy": "Follow"},
        "storage": {"accessMode": "ReadWriteMany"}}}, namespace)
    for name in ("pinned", "follower"):
        assert wait_phase(cluster, operator, name, "Ready", timeout=120)["resolved"]["sha"] == old
    snapshots = claim_path(cluster, namespace, "follower-weights") / "models--hub-test--follow-GGUF" / "snapshots"
    assert [p.name for p in snapshots.iterdir()] == [old]
    repo.refs["main"] = new  # someone pushes to main
    st = wait_for(lambda: (s := md_status(cluster, namespace, "follower"))["resolved"]["sha"] == new and s, 60,
                  "the follower to move to the new commit")
    moved = condition(st, "Resolved")
    assert moved["reason"] == "RevisionMoved" and f"moved from {old[:7]} to {new[:7]}" in moved["message"]
    wait_for(lambda: get(cluster, "deployment", "follower", namespace)["spec"]["template"]["metadata"]
             ["annotations"]["modelship.io/revision"] == new, 60, "the Deployment to roll to the new commit")
    assert md_status(cluster, namespace, "pinned")["resolved"]["sha"] == old  # Pin stays where it was
    # Once the old pods are gone, the old snapshot is collected and the ledger says so.
    wait_for(lambda: [p.name for p in snapshots.iterdir()] == [new], 60, "the old snapshot to be collected")
    wait_for(lambda: ledger(cluster, namespace, "follower-weights") == [f"hub-test/follow-GGUF@{new}"], 30,
             "the ledger to drop the collected snapshot")
    wait_for(lambda: not [j for j in job_names(cluster, namespace) if "-collect-" in j], 30, "the collection Job to go")
    # The operator posts its Events after the writes they announce: the Event may trail the ledger.
    wait_for(lambda: "Collected" in cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                                                    "involvedObject.name=follower", "-o",
                                                    "jsonpath={.items[*].reason}"), 30,
             "the Collected Event")
    assert md_status(cluster, namespace, "follower")["phase"] == "Ready"


def test_the_download_window_runs_one_job_at_a_time_and_models_on_one_claim_share_theirs(
        cluster, namespace, core, operator, kwok_pools, tmp_path):
    """maxConcurrentDownloads 1, four ModelDeployments on two pre-loaded claims, two on each
    (their Jobs run on a kwok pool, which completes them): the two on a claim share one Job,
    owned by them and no other; the second Job is made only once the first has completed, the
    others say DownloadQueued meanwhile, and every one becomes Ready."""
    operator.start(pools=kwok_pools, config={"downloadPool": "cpu", "maxConcurrentDownloads": 1})
    claims = {"weights-a": ["w0", "w1"], "weights-b": ["w2", "w3"]}
    pvs = [f"{namespace}-{claim}" for claim in claims]
    try:
        for pv, claim in zip(pvs, claims):
            (tmp_path / claim).mkdir()
            core.create_persistent_volume({
                "metadata": {"name": pv},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                         "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(tmp_path / claim)},
                         "claimRef": {"namespace": namespace, "name": claim}}})
            core.create_namespaced_persistent_volume_claim(namespace, {
                "metadata": {"name": claim},
                "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                         "resources": {"requests": {"storage": "1Gi"}}}})
        for claim, names in claims.items():
            for name in names:
                cluster.apply(tiny(name, repo="modelship-test/tiny-llama-GGUF") | {"spec": {
                    "model": {"repo": "modelship-test/tiny-llama-GGUF"}, "pool": "cpu",
                    "storage": {"existingClaim": claim}}}, namespace)
        names = [n for group in claims.values() for n in group]
        reasons: set[str] = set()
        most = 0  # Jobs seen not finished at once

        def all_ready() -> bool:
            nonlocal most
            jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json"))["items"]
            most = max(most, sum(1 for j in jobs if not any(c["type"] in ("Complete", "Failed") and
                                                            c["status"] == "True"
                                                            for c in j.get("status", {}).get("conditions") or [])))
            statuses = [md_status(cluster, namespace, n) for n in names]
            reasons.update(condition(st, "Downloaded").get("reason", "") for st in statuses)
            return all(st.get("phase") == "Ready" for st in statuses)

        wait_for(all_ready, 180, "every ModelDeployment to be Ready",
                 lambda: cluster.kubectl("get", "md,job", "-n", namespace, "-o", "wide") + operator.log()[-3000:])
        assert "DownloadQueued" in reasons, reasons
        assert most == 1, f"{most} Jobs were seen running at once"
        jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json"))["items"]
        by_claim = {j["metadata"]["labels"]["modelship.io/claim"]: j for j in jobs}
        assert len(jobs) == 2 and sorted(by_claim) == sorted(claims), [j["metadata"]["name"] for j in jobs]
        for claim, job in by_claim.items():  # made by the first on it; the other joined it if it ran still
            owners = {r["name"] for r in job["metadata"]["ownerReferences"]}
            assert owners and owners <= set(claims[claim]), (claim, owners)
            assert {md_status(cluster, namespace, n)["download"]["completedJob"] for n in claims[claim]} == {
                job["metadata"]["name"]}
        spans = sorted((j["metadata"]["creationTimestamp"], j["status"]["completionTime"]) for j in jobs)
        for (_, done), (made, _) in zip(spans, spans[1:]):  # (RFC 3339 in UTC: they sort as text)
            assert made >= done, f"a Job made at {made}, before the one before it completed at {done}: {spans}"
        metrics = operator.metrics()
        assert "modelship_downloads_queued 0.0" in metrics and "modelship_downloads_in_flight 0.0" in metrics
    finally:
        cluster.kubectl("delete", "md", "--all", "-n", namespace, "--wait=true", check=False)
        for pv in pvs:
            try:
                core.delete_persistent_volume(pv)
            except Exception:  # noqa: BLE001 - not made
                pass


# ReadWriteMany: Jobs run on the local node, where files really land. (On ReadWriteOnce, a
# collection runs where the volume is attached: next to the serving pods, here kwok nodes.)
SHARED_RWX = {"sharedCache": True, "accessMode": "ReadWriteMany"}


@pytest.mark.localnode
def test_shared_cache_downloads_a_repo_at_a_commit_once(cluster, namespace, operator, fake_hub, kwok_pools,
                                                        monkeypatch):
    """Two ModelDeployments of one repo@sha on the namespace's shared cache volume: one Job,
    one download, one volume owned by both and deleted with the last of them."""
    from modelship_testbed.hub_fake import FakeRepo

    weights = b"shared weights " * 20_000
    # (file names are unique across the session: the fake Hub counts bytes per file name)
    fake_hub.add_repo(FakeRepo("hub-test/shared-GGUF", {"9" * 40: {"shared-Q4_K_M.gguf": weights}},
                               {"main": "9" * 40}))
    # A slow link: the download takes ~10 s (5 pieces of 64 KiB, 2 s apart), so the Job is still
    # running when the second ModelDeployment's first reconcile finds it and joins it (a Job
    # that finished first would keep one owner). monkeypatch puts the session's Hub back after.
    monkeypatch.setattr(fake_hub, "chunk_delay", 2.0)
    operator.start(pools=kwok_pools)
    for name in ("first", "second"):
        cluster.apply(tiny(name, repo="hub-test/shared-GGUF") | {"spec": {
            "model": {"repo": "hub-test/shared-GGUF"}, "storage": SHARED_RWX}}, namespace)
    for name in ("first", "second"):
        st = wait_phase(cluster, operator, name, "Ready", timeout=120)
        assert st["download"]["job"].startswith("modelship-fetch-")
    jobs = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json"))["items"]
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    assert fake_hub.served["shared-Q4_K_M.gguf"] == len(weights)
    pvc = get(cluster, "pvc", "modelship-cache", namespace)
    assert sorted(r["name"] for r in pvc["metadata"]["ownerReferences"]) == ["first", "second"]
    assert sorted(r["name"] for r in jobs[0]["metadata"]["ownerReferences"]) == ["first", "second"]
    for name in ("first", "second"):
        claim = get(cluster, "deployment", name, namespace)["spec"]["template"]["spec"]["volumes"][0]
        assert claim["persistentVolumeClaim"] == {"claimName": "modelship-cache", "readOnly": True}
    # A third one, of another repo, on the same volume; deleted again, its snapshot is collected.
    fake_hub.add_repo(FakeRepo("hub-test/shared2-GGUF", {"a" * 40: {"shared2-Q4_K_M.gguf": b"other weights"}},
                               {"main": "a" * 40}))
    cluster.apply(tiny("third", repo="hub-test/shared2-GGUF") | {"spec": {
        "model": {"repo": "hub-test/shared2-GGUF"}, "storage": SHARED_RWX}}, namespace)
    wait_phase(cluster, operator, "third", "Ready", timeout=120)
    volume = claim_path(cluster, namespace, "modelship-cache")
    assert (volume / "models--hub-test--shared2-GGUF" / "snapshots" / ("a" * 40)).is_dir()
    assert ledger(cluster, namespace, "modelship-cache") == [f"hub-test/shared-GGUF@{'9' * 40}",
                                                             f"hub-test/shared2-GGUF@{'a' * 40}"]
    cluster.kubectl("delete", "md", "third", "-n", namespace, "--wait=true")
    # 90 s: nothing may make the others reconcile before their next resync (resyncSeconds 20)
    # after "third" goes; then a collection Job runs on the local node and is read back.
    wait_for(lambda: not (volume / "models--hub-test--shared2-GGUF").exists(), 90, "the unused repo to be collected")
    wait_for(lambda: ledger(cluster, namespace, "modelship-cache") == [f"hub-test/shared-GGUF@{'9' * 40}"], 30,
             "the ledger to drop it")
    assert (volume / "models--hub-test--shared-GGUF" / "snapshots" / ("9" * 40) / "shared-Q4_K_M.gguf").read_bytes() \
        == weights
    wait_for(lambda: not [j for j in job_names(cluster, namespace) if "-collect-" in j], 30, "the collection Job to go")
    assert md_status(cluster, namespace, "first")["phase"] == "Ready"

    cluster.kubectl("delete", "md", "first", "-n", namespace, "--wait=true")
    # The garbage collector has dealt with the volume once it has dropped the reference to
    # "first" (keeping what "second" still owns) or marked it for deletion (wrongly).
    def collected_first() -> dict | None:
        meta = get(cluster, "pvc", "modelship-cache", namespace)["metadata"]
        owners = [r["name"] for r in meta.get("ownerReferences") or []]
        return meta if "first" not in owners or meta.get("deletionTimestamp") else None

    meta = wait_for(collected_first, 60, "the garbage collector to deal with the volume first owned")
    assert meta.get("deletionTimestamp") is None
    cluster.kubectl("delete", "md", "second", "-n", namespace, "--wait=true")
    wait_for(lambda: "modelship-cache" not in cluster.kubectl("get", "pvc", "-n", namespace, "-o", "name"), 60,
             "the shared volume to go with its last owner")


@pytest.mark.localnode
def test_a_volume_shared_across_namespaces_downloads_once_and_keeps_what_others_use(
        cluster, namespace, core, operator, fake_hub, kwok_pools, tmp_path):
    """Two namespaces whose `modelship-cache` claims bind to one ReadWriteMany export (here
    two static PVs on one folder): one download for both; when one namespace moves on, its
    collection keeps what the other still serves."""
    from modelship_testbed.hub_fake import FakeRepo

    other = f"{namespace[:50]}-b"
    core.create_namespace({"metadata": {"name": other}})
    export = tmp_path / "export"  # the NFS export both namespaces mount
    export.mkdir(mode=0o777)
    export.chmod(0o777)
    pvs = [f"{ns}-cache" for ns in (namespace, other)]
    try:
        for ns, pv in zip((namespace, other), pvs):
            core.create_persistent_volume({"metadata": {"name": pv}, "spec": {
                "capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany"],
                "storageClassName": "modelship-export", "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(export), "type": "Directory"},
                "claimRef": {"namespace": ns, "name": "modelship-cache"}}})
        weights = b"weights shared by two teams " * 10_000
        fake_hub.add_repo(FakeRepo("hub-test/xns-GGUF", {"b" * 40: {"xns-Q4_K_M.gguf": weights}}, {"main": "b" * 40}))
        fake_hub.add_repo(FakeRepo("hub-test/xns2-GGUF", {"c" * 40: {"xns2-Q4_K_M.gguf": b"team a's next model"}},
                                   {"main": "c" * 40}))
        operator.namespaces = [other]
        operator.start(pools=kwok_pools)
        storage = {"sharedCache": True, "accessMode": "ReadWriteMany", "storageClassName": "modelship-export"}
        for ns in (namespace, other):
            cluster.apply(tiny("team", repo="hub-test/xns-GGUF") | {"spec": {
                "model": {"repo": "hub-test/xns-GGUF"}, "storage": storage}}, ns)
        for ns in (namespace, other):
            wait_for(lambda: md_status(cluster, ns, "team").get("phase") == "Ready", 120, f"team in {ns} to be Ready")
        assert fake_hub.served["xns-Q4_K_M.gguf"] == len(weights)  # one download for both namespaces
        snapshot = export / "models--hub-test--xns-GGUF" / "snapshots" / ("b" * 40)
        assert (snapshot / "xns-Q4_K_M.gguf").read_bytes() == weights
        assert sorted(p.parent.name for p in (export / ".modelship" / "users").glob("*/*")) == sorted([namespace, other])
        # The first namespace moves on to another model: its collection must keep what the other serves.
        cluster.apply(tiny("team", repo="hub-test/xns2-GGUF") | {"spec": {
            "model": {"repo": "hub-test/xns2-GGUF"}, "storage": storage}}, namespace)
        wait_for(lambda: ledger(cluster, namespace, "modelship-cache") == [f"hub-test/xns2-GGUF@{'c' * 40}"], 90,
                 "the first namespace to collect what it no longer uses")
        assert (snapshot / "xns-Q4_K_M.gguf").read_bytes() == weights  # the other namespace still serves it
        assert [p.parent.name for p in (export / ".modelship" / "users").glob("*/hub-test--xns-GGUF@*")] == [other]
        assert md_status(cluster, other, "team")["phase"] == "Ready"
    finally:
        operator.stop()
        core.delete_namespace(other)
        for pv in pvs:
            try:
                core.delete_persistent_volume(pv)
            except Exception:  # noqa: BLE001 - already gone
                pass

"""The decisions of `modelship.reconcile.plan`: from (desired, observed) to (actions, status), with no API server.

Observed children are built with the operator's own builders (so their applied-hash matches what
`plan()` wants) plus the `status` the API server would add.
"""

from __future__ import annotations

import copy

import pytest

from modelship import manifests
from modelship.api import ModelDeployment, ModelDeploymentStatus, ResolvedModel
from modelship.reconcile.facts import pod_problems
from modelship.reconcile import plan as plan_module
from modelship.reconcile.plan import plan
from modelship.reconcile.policy import choose_engine, place
from modelship.reconcile.types import Observed, ResolveError, SpecError
from modelship.settings import Settings

NAME, NS = "tiny", "ns1"
ENDPOINT = "https://huggingface.co"
T0, T1, T2 = "2025-01-01T00:00:00Z", "2025-01-01T00:05:00Z", "2025-01-01T00:10:00Z"
GGUF_BYTES = 100_000_000


def make_md(spec: dict | None = None, generation: int = 1, status: dict | None = None) -> ModelDeployment:
    raw = {
        "apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": NS, "uid": "0000-uid-1", "generation": generation},
        "spec": {"model": {"repo": "org/tiny-GGUF"}, **(spec or {})},
    }
    if status is not None:
        raw["status"] = status
    return ModelDeployment.model_validate(raw)


def gguf() -> ResolvedModel:
    return ResolvedModel.model_validate({
        "repo": "org/tiny-GGUF", "revision": "main", "sha": "a" * 40, "shortSha": "aaaaaaa",
        "engine": "llamacpp", "format": "gguf", "modelFile": "tiny-Q4_K_M.gguf", "quantization": "Q4_K_M",
        "files": [{"path": "tiny-Q4_K_M.gguf", "size": GGUF_BYTES, "sha256": "b" * 64}],
        "totalBytes": GGUF_BYTES,
    })


def safetensors() -> ResolvedModel:
    files = [{"path": "model.safetensors", "size": 3 * 1024 ** 3, "sha256": "c" * 64},
             {"path": "config.json", "size": 700}]
    return ResolvedModel.model_validate({
        "repo": "org/tiny", "revision": "main", "sha": "d" * 40, "shortSha": "ddddddd", "engine": "tgi",
        "format": "safetensors", "files": files, "totalBytes": sum(f["size"] for f in files),
    })


def settled_plan(md, resolution, observed, *args, **kwargs):
    """`plan`, checked for what the controller relies on to skip a reconcile
    (`Controller._unsettled`): a plan with nothing to do but its status (the Service's apply
    aside) plans that very status again, and nothing to do, once the status is written."""
    p = plan_module.plan(md, resolution, observed, *args, **kwargs)
    if p.status and not [a for a in p.actions if a.kind != "Service"]:
        again = plan_module.plan(ModelDeployment.model_validate(
            {**md.model_dump(by_alias=True, exclude_none=True, mode="json"), "status": copy.deepcopy(p.status)}),
                                 resolution, observed, *args, **kwargs)
        assert again.status == p.status, "planning again on the status it wrote changed the status"
        assert not [a for a in again.actions if a.kind != "Service"], "planning again on its status found work"
    return p


@pytest.fixture(autouse=True)
def every_plan_settles(monkeypatch):
    monkeypatch.setitem(globals(), "plan", settled_plan)


def settings() -> Settings:
    return Settings()


def cond(p, type_: str) -> dict:
    found = [c for c in p.status["conditions"] if c["type"] == type_]
    assert len(found) == 1, f"expected one {type_} condition, got {p.status['conditions']}"
    return found[0]


def applied(p) -> set[tuple[str, str]]:
    return {(a.kind, a.name) for a in p.actions if a.verb == "apply"}


# --- observed children, as the API server would show them --------------------------------------


def obs_service(md):
    return manifests.service(md)


def obs_pvc(md, resolved, size: str | None = None):
    """The PVC as created earlier, from this spec or (with `size`) from one that set storage.size."""
    if size is not None:
        md = make_md({**md.spec.wire(), "storage": {**md.spec.storage.wire(), "size": size}})
    pvc = manifests.pvc(md, resolved, settings())
    pvc["status"] = {"phase": "Bound", "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]}}
    pvc["metadata"]["uid"] = "pvc-uid-1"
    if not md.spec.storage.existing_claim:  # the ledger names what was put on it
        key = manifests.snapshot_key(resolved.repo, resolved.sha)
        pvc["metadata"]["annotations"][manifests.ledger_annotation(key)] = key
    return pvc


def obs_job(md, resolved, state: str | None = None, message: str = ""):
    job = manifests.download_job(md, resolved, ENDPOINT, settings())
    if state == "Complete":
        job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    elif state == "Failed":
        job["status"] = {"failed": 5, "conditions": [{"type": "Failed", "status": "True",
                                                      "reason": "BackoffLimitExceeded", "message": message}]}
    else:
        job["status"] = {"active": 1}
    return job


def obs_deployment(md, resolved, ready: int = 1, replicas: int | None = None, generation: int = 1,
                   observed_generation: int | None = None, updated: int | None = None):
    dep = manifests.deployment(md, resolved, place(md, resolved.engine, settings()), settings())
    dep["metadata"]["generation"] = generation
    replicas = md.spec.replicas if replicas is None else replicas
    dep["status"] = {"replicas": replicas, "readyReplicas": ready,
                     "updatedReplicas": replicas if updated is None else updated,
                     "observedGeneration": generation if observed_generation is None else observed_generation}
    return dep


def observed(md, resolved, job_state: str | None = "Running", deployment: dict | None = None, **kw) -> Observed:
    """Every child present and current (job in `job_state`), plus a Deployment if given."""
    return Observed(pvc=obs_pvc(md, resolved), jobs=[obs_job(md, resolved, job_state)],
                    service=obs_service(md), deployment=deployment, **kw)


def run(md, resolution, obs: Observed, now: str = T0):
    return plan(md, resolution, copy.deepcopy(obs), settings(), now, ENDPOINT)


# --- the happy path, step by step -------------------------------------------------------------


def test_fresh_object_creates_service_volume_and_job():
    md, r = make_md(), gguf()
    p = run(md, r, Observed())
    job_name = manifests.download_job(md, r, ENDPOINT, settings())["metadata"]["name"]
    assert applied(p) == {("Service", NAME), ("PersistentVolumeClaim", f"{NAME}-weights"), ("Job", job_name)}
    assert [(a.verb, a.kind) for a in p.actions] == [("apply", "Service"), ("apply", "PersistentVolumeClaim"),
                                                     ("annotate", "PersistentVolumeClaim"), ("apply", "Job")]
    assert all(not a.exists for a in p.actions if a.verb == "apply")
    key = f"{r.repo}@{r.sha}"  # the ledger records the snapshot before the Job that puts it there exists
    assert p.actions[2].body == {manifests.ledger_annotation(key): key}
    assert p.status["phase"] == "Downloading"
    assert cond(p, "Resolved")["status"] == "True"
    d = cond(p, "Downloaded")
    assert (d["status"], d["reason"]) == ("False", "Downloading")
    assert job_name in d["message"]
    assert cond(p, "Ready")["status"] == "False"
    assert cond(p, "Available")["reason"] == "WaitingForDownload"
    assert p.requeue_after is not None and p.requeue_after > 0
    assert p.status["download"] == {"job": job_name, "bytesDone": 0, "bytesTotal": GGUF_BYTES, "percent": 0}
    assert p.status["observedGeneration"] == 1
    assert p.status["resolved"]["sha"] == "a" * 40
    for c in p.status["conditions"]:
        assert c["lastTransitionTime"] == T0 and c["observedGeneration"] == 1


def test_fresh_pvc_is_sized_from_the_files_with_a_margin():
    md, r = make_md(), safetensors()
    p = run(md, r, Observed())
    pvc = next(a.body for a in p.actions if a.kind == "PersistentVolumeClaim")
    # 3 GiB + 700 B, plus at least 1 GiB, rounded up to whole GiB
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_job_running_needs_no_new_actions():
    md, r = make_md(), gguf()
    p = run(md, r, observed(md, r, "Running"))
    assert p.actions == []
    assert p.status["phase"] == "Downloading"
    assert cond(p, "Downloaded")["reason"] == "Downloading"
    assert p.requeue_after is not None


def test_job_complete_creates_the_deployment():
    md, r = make_md(), gguf()
    p = run(md, r, observed(md, r, "Complete"))
    assert [(a.verb, a.kind, a.name, a.exists) for a in p.actions] == [("apply", "Deployment", NAME, False)]
    dep = p.actions[0].body
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"/models/models--org--tiny-GGUF/snapshots/{'a' * 40}/tiny-Q4_K_M.gguf" in args
    d = cond(p, "Downloaded")
    assert (d["status"], d["reason"]) == ("True", "Downloaded")
    assert p.status["download"]["bytesDone"] == GGUF_BYTES and p.status["download"]["percent"] == 100
    assert p.status["phase"] == "Starting"
    assert cond(p, "Ready")["reason"] == "RollingOut"
    # The status written after the apply says what comes next, not that there is no Deployment:
    # the reconcile that sees the Deployment in the cache then has nothing to write.
    a = cond(p, "Available")
    assert (a["status"], a["reason"], a["message"]) == \
        ("False", "NoReplicaReady", "waiting for the engine to load the model and pass its probes")
    dep = {**obs_deployment(md, r), "status": {}}  # as the apply's answer has it: its controller has not seen it
    after = run(make_md(status=p.status), r, observed(md, r, "Complete", deployment=dep))
    assert after.actions == [] and after.status == p.status


def test_ready_and_settled_deployment():
    md, r = make_md(), gguf()
    p = run(md, r, observed(md, r, "Complete", deployment=obs_deployment(md, r, ready=1)))
    assert p.actions == []
    assert p.status["phase"] == "Ready"
    ready = cond(p, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Ready")
    assert cond(p, "Available")["status"] == "True"
    assert p.status["readyReplicas"] == 1 and p.status["replicas"] == 1
    assert p.status["endpoint"]["url"] == f"http://{NAME}.{NS}.svc"
    assert p.status["endpoint"]["openAIBaseURL"] == f"http://{NAME}.{NS}.svc/v1"
    assert p.status["endpoint"]["model"] == NAME
    assert p.requeue_after is None
    assert [(e.type, e.reason) for e in p.events] == [("Normal", "Ready")]


def test_deployment_not_yet_observed_by_its_controller_is_not_ready():
    md, r = make_md(), gguf()
    dep = obs_deployment(md, r, ready=1, generation=2, observed_generation=1)
    p = run(md, r, observed(md, r, "Complete", deployment=dep))
    assert p.actions == []
    assert p.status["phase"] == "Starting"
    assert cond(p, "Ready")["reason"] == "RollingOut"


def test_spec_change_rolls_out_the_deployment():
    old = make_md({"serving": {"threads": 2}})
    r = gguf()
    old_dep = obs_deployment(old, r, ready=1)
    new = make_md({"serving": {"threads": 4}}, generation=2)
    p = run(new, r, observed(new, r, "Complete", deployment=old_dep))
    assert [(a.verb, a.kind, a.name, a.exists) for a in p.actions] == [("apply", "Deployment", NAME, True)]
    args = p.actions[0].body["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("-t") + 1] == "4"
    ready = cond(p, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RollingOut")
    assert p.status["phase"] == "Starting"
    assert p.status["observedGeneration"] == 2
    assert cond(p, "Available")["status"] == "True"  # the old pods still serve


def test_last_transition_time_moves_only_when_status_flips():
    r = gguf()
    md = make_md()
    obs = observed(md, r, "Running")
    p1 = run(md, r, obs, now=T0)
    md2 = make_md(status=p1.status)
    p2 = run(md2, r, obs, now=T1)
    for type_ in ("Resolved", "Downloaded", "Ready", "Available"):
        assert cond(p2, type_)["lastTransitionTime"] == T0, type_
    # The Job completes: Downloaded flips to True, Resolved stays True.
    md3 = make_md(status=p2.status)
    p3 = run(md3, r, observed(md3, r, "Complete"), now=T2)
    assert cond(p3, "Downloaded")["status"] == "True"
    assert cond(p3, "Downloaded")["lastTransitionTime"] == T2
    assert cond(p3, "Resolved")["lastTransitionTime"] == T0
    assert cond(p3, "Ready")["lastTransitionTime"] == T0  # still False (RollingOut)
    assert cond(p3, "Ready")["reason"] == "RollingOut"


def test_status_round_trips_through_the_api_model():
    md, r = make_md(), gguf()
    p = run(md, r, observed(md, r, "Complete", deployment=obs_deployment(md, r)))
    assert ModelDeploymentStatus.model_validate(p.status).wire() == p.status


# --- spec errors: nothing is created ---------------------------------------------------------


def test_unknown_pool_fails_without_actions():
    md, r = make_md({"pool": "nope"}), gguf()
    p = run(md, r, Observed())
    assert p.actions == []
    assert p.status["phase"] == "Failed"
    ready = cond(p, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PoolNotFound")
    assert "'nope'" in ready["message"] and "known pools: cpu, gpu" in ready["message"]
    assert p.requeue_after is None
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "PoolNotFound")]


def test_gpus_on_a_cpu_pool():
    md, r = make_md({"pool": "cpu", "gpus": 2}), gguf()
    p = run(md, r, Observed())
    assert p.actions == []
    assert p.status["phase"] == "Failed"
    assert cond(p, "Ready")["reason"] == "PoolHasNoGPUs"


def test_more_gpus_than_the_pool_has():
    md, r = make_md({"gpus": 9}), gguf()  # the default gpu pool has maxGpus 8
    p = run(md, r, Observed())
    assert p.actions == []
    assert cond(p, "Ready")["reason"] == "TooManyGPUs"
    assert "at most 8" in cond(p, "Ready")["message"]


def test_gpu_placement_uses_the_gpu_pool():
    md, r = make_md({"gpus": 2}), gguf()
    pl = place(md, r.engine, settings())
    assert (pl.pool, pl.gpus) == ("gpu", 2)
    assert place(make_md(), "llamacpp", settings()).pool == "cpu"
    assert place(make_md(), "tgi", settings()).gpus == 1
    with pytest.raises(SpecError) as e:
        place(make_md({"gpus": 0}), "tgi", settings())
    assert e.value.reason == "GPUsRequired"


def test_storage_too_small():
    md, r = make_md({"storage": {"size": "50M"}}), gguf()  # 50 MB < 100 MB of files
    p = run(md, r, Observed())
    assert p.actions == []
    assert p.status["phase"] == "Failed"
    ready = cond(p, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "StorageTooSmall")
    # the files' total, rounded up to whole GiB
    assert "set it to at least 1Gi" in ready["message"]


def test_storage_size_large_enough_is_used():
    md, r = make_md({"storage": {"size": "2Gi"}}), gguf()
    p = run(md, r, Observed())
    pvc = next(a.body for a in p.actions if a.kind == "PersistentVolumeClaim")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"


# --- resolution errors -------------------------------------------------------------------------


def test_transient_resolve_error_retries():
    md = make_md()
    p = run(md, ResolveError("HubUnreachable", "the Hub did not answer", transient=True), Observed())
    assert p.actions == []
    assert p.status["phase"] == "Resolving"
    res = cond(p, "Resolved")
    assert (res["status"], res["reason"], res["message"]) == ("False", "HubUnreachable", "the Hub did not answer")
    assert cond(p, "Ready")["reason"] == "HubUnreachable"
    assert p.requeue_after is not None and p.requeue_after > 0
    assert p.events == []  # not a failure yet


def test_permanent_resolve_error_fails():
    md = make_md()
    p = run(md, ResolveError("RepoNotFound", "org/tiny-GGUF is not in the catalog"), Observed())
    assert p.actions == []
    assert p.status["phase"] == "Failed"
    res = cond(p, "Resolved")
    assert (res["status"], res["reason"]) == ("False", "RepoNotFound")
    assert p.requeue_after is None


def test_resolve_error_keeps_what_runs_untouched():
    md, r = make_md(), gguf()
    obs = observed(md, r, "Complete", deployment=obs_deployment(md, r))
    p = run(md, ResolveError("HubUnreachable", "timeout", transient=True), obs)
    assert p.actions == []
    assert cond(p, "Available")["status"] == "True"
    assert p.status["readyReplicas"] == 1


def test_spec_error_as_resolution():
    md = make_md()
    p = run(md, SpecError("EngineMismatch", "wrong engine"), Observed())
    assert p.actions == []
    assert p.status["phase"] == "Failed"
    assert cond(p, "Ready")["reason"] == "EngineMismatch"
    assert p.requeue_after is None


# --- children's life cycle ---------------------------------------------------------------------


def test_stale_job_from_another_revision_is_deleted():
    md, r = make_md(), gguf()
    old_r = ResolvedModel.model_validate({**r.wire(), "sha": "e" * 40, "shortSha": "eeeeeee"})
    stale = obs_job(md, old_r, "Complete")
    assert stale["metadata"]["name"] != manifests.download_job(md, r, ENDPOINT, settings())["metadata"]["name"]
    obs = Observed(pvc=obs_pvc(md, r), service=obs_service(md), jobs=[stale])
    p = run(md, r, obs)
    deletes = [(a.kind, a.name) for a in p.actions if a.verb == "delete"]
    assert deletes == [("Job", stale["metadata"]["name"])]
    assert applied(p) == {("Job", manifests.download_job(md, r, ENDPOINT, settings())["metadata"]["name"])}
    assert p.status["phase"] == "Downloading"


def test_stale_job_is_deleted_next_to_the_current_one():
    md, r = make_md(), gguf()
    old_r = ResolvedModel.model_validate({**r.wire(), "sha": "e" * 40})
    stale, current = obs_job(md, old_r, "Running"), obs_job(md, r, "Complete")
    obs = Observed(pvc=obs_pvc(md, r), service=obs_service(md), jobs=[stale, current],
                   deployment=obs_deployment(md, r))
    p = run(md, r, obs)
    assert [(a.verb, a.kind, a.name) for a in p.actions] == [("delete", "Job", stale["metadata"]["name"])]
    assert p.status["phase"] == "Ready"


def test_pvc_is_never_shrunk():
    md, r = make_md(), gguf()  # wants 1Gi
    obs = observed(md, r, "Running")
    obs.pvc = obs_pvc(md, r, size="10Gi")
    want = manifests.pvc(md, r, settings())
    assert want["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert obs.pvc["metadata"]["annotations"] != want["metadata"]["annotations"]  # would be re-applied
    p = run(md, r, obs)
    assert not [a for a in p.actions if a.kind == "PersistentVolumeClaim"]


def test_pvc_is_expanded():
    md, r = make_md({"storage": {"size": "5Gi"}}), gguf()
    obs = observed(md, r, "Running")
    obs.pvc = obs_pvc(md, r, size="2Gi")
    p = run(md, r, obs)
    pvcs = [a for a in p.actions if a.kind == "PersistentVolumeClaim"]
    assert len(pvcs) == 1
    assert (pvcs[0].verb, pvcs[0].exists) == ("apply", True)
    assert pvcs[0].body["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_existing_claim_missing():
    md, r = make_md({"storage": {"existingClaim": "preloaded"}}), gguf()
    p = run(md, r, Observed())
    assert p.status["phase"] == "Pending"
    ready, dl = cond(p, "Ready"), cond(p, "Downloaded")
    assert (ready["status"], ready["reason"]) == ("False", "ClaimNotFound")
    assert (dl["status"], dl["reason"]) == ("False", "ClaimNotFound")
    assert "'preloaded'" in ready["message"] and NS in ready["message"]
    assert not [a for a in p.actions if a.kind in ("PersistentVolumeClaim", "Job", "Deployment")]
    assert p.requeue_after is not None


def test_existing_claim_present_is_used_not_created():
    md, r = make_md({"storage": {"existingClaim": "preloaded"}}), gguf()
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "preloaded", "namespace": NS},
             "spec": {"resources": {"requests": {"storage": "1Gi"}}}}
    p = run(md, r, Observed(pvc=claim, service=obs_service(md)))
    assert applied(p) == {("Job", manifests.download_job(md, r, ENDPOINT, settings())["metadata"]["name"])}
    job = next(a.body for a in p.actions if a.kind == "Job")
    vols = job["spec"]["template"]["spec"]["volumes"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "preloaded"}} in vols


def test_failed_download_job():
    md, r = make_md(), gguf()
    obs = observed(md, r, None)
    obs.jobs = [obs_job(md, r, "Failed", message="Job has reached the specified backoff limit")]
    p = run(md, r, obs)
    job_name = manifests.download_job(md, r, ENDPOINT, settings())["metadata"]["name"]
    assert p.actions == []
    assert p.status["phase"] == "Failed"
    ready, dl = cond(p, "Ready"), cond(p, "Downloaded")
    assert (ready["status"], ready["reason"]) == ("False", "DownloadFailed")
    assert (dl["status"], dl["reason"]) == ("False", "DownloadFailed")
    assert f"kubectl logs job/{job_name}" in ready["message"]
    assert "backoff limit" in ready["message"]
    assert p.requeue_after is None


def test_scaled_to_zero():
    md, r = make_md({"replicas": 0}), gguf()
    dep = obs_deployment(md, r, ready=0, replicas=0)
    p = run(md, r, observed(md, r, "Complete", deployment=dep))
    assert p.actions == []
    assert p.status["phase"] == "Ready"
    ready, avail = cond(p, "Ready"), cond(p, "Available")
    assert (ready["status"], ready["reason"]) == ("True", "ScaledToZero")
    assert (avail["status"], avail["reason"]) == ("False", "ScaledToZero")
    assert p.status["replicas"] == 0 and p.status["readyReplicas"] == 0


def test_not_ready_pods_explain_themselves():
    md, r = make_md({"replicas": 2}), gguf()
    dep = obs_deployment(md, r, ready=1, replicas=2, updated=2)
    pod = {"metadata": {"name": f"{NAME}-abc"},
           "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                      "message": "0/3 nodes are available"}]}}
    p = run(md, r, observed(md, r, "Complete", deployment=dep, pods=[pod]))
    assert p.status["phase"] == "Degraded"
    ready = cond(p, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ReplicasNotReady")
    assert f"pod {NAME}-abc: Unschedulable: 0/3 nodes are available" in ready["message"]


def test_crashing_pods_have_a_reason_of_their_own():
    """Tools that read reasons, not messages (Argo CD's Lua has no string library), see a crash loop."""
    md, r = make_md({"replicas": 2}), gguf()
    dep = obs_deployment(md, r, ready=1, replicas=2, updated=2)
    crashing = {"metadata": {"name": f"{NAME}-abc"}, "status": {"containerStatuses": [{
        "name": "llamacpp", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
        "lastState": {"terminated": {"exitCode": 1}}}]}}
    p = run(md, r, observed(md, r, "Complete", deployment=dep, pods=[crashing]))
    ready = cond(p, "Ready")
    assert (p.status["phase"], ready["reason"]) == ("Degraded", "CrashLoopBackOff")
    assert "CrashLoopBackOff (last exit code 1)" in ready["message"]
    # A rollout whose new pods crash (updated < want) says so too, not RollingOut forever.
    rolling = obs_deployment(md, r, ready=1, replicas=2, updated=1)
    p = run(md, r, observed(md, r, "Complete", deployment=rolling, pods=[crashing]))
    assert cond(p, "Ready")["reason"] == "CrashLoopBackOff" and "rolling out" in cond(p, "Ready")["message"]
    gone = {**crashing, "metadata": {**crashing["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    p = run(md, r, observed(md, r, "Complete", deployment=dep, pods=[gone]))
    assert cond(p, "Ready")["reason"] == "ReplicasNotReady"  # a pod being deleted does not count


def test_tgi_deployment_on_the_gpu_pool():
    md = make_md({"model": {"repo": "org/tiny"}})
    r = safetensors()
    p = run(md, r, observed(md, r, "Complete"))
    dep = next(a.body for a in p.actions if a.kind == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["name"] == "tgi"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"modelship.io/pool": "gpu"}
    assert c["args"][c["args"].index("--num-shard") + 1] == "1"


# --- helpers ---------------------------------------------------------------------------------


def test_pod_problems_reads_scheduler_and_kubelet():
    pods = [
        {"metadata": {"name": "b-pod"},
         "status": {"containerStatuses": [{
             "name": "llamacpp",
             "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
             "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}},
        {"metadata": {"name": "a-pod"},
         "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                    "message": "0/3 nodes are available"}]}},
        {"metadata": {"name": "c-pod"},
         "status": {"containerStatuses": [{"name": "x", "state": {"waiting": {"reason": "ContainerCreating"}}}]}},
    ]
    assert pod_problems(pods) == [
        "pod a-pod: Unschedulable: 0/3 nodes are available",
        "pod b-pod: CrashLoopBackOff (last exit code 1): back-off 40s restarting",
    ]


def test_pod_problems_is_limited():
    pods = [{"metadata": {"name": f"p{i}"},
             "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                        "message": "no"}]}} for i in range(5)]
    assert len(pod_problems(pods)) == 3
    assert pod_problems(pods, limit=1) == ["pod p0: Unschedulable: no"]


@pytest.mark.parametrize("requested,fmt,engine", [
    ("auto", "gguf", "llamacpp"), ("auto", "safetensors", "tgi"),
    ("llamacpp", "gguf", "llamacpp"), ("tgi", "safetensors", "tgi"), ("vllm", "safetensors", "vllm"),
    ("sglang", "safetensors", "sglang"),
])
def test_choose_engine(requested, fmt, engine):
    assert choose_engine(requested, fmt) == engine


@pytest.mark.parametrize("default", ["tgi", "vllm", "sglang"])
def test_auto_takes_the_operators_default_engine_for_safetensors_only(default):
    assert choose_engine("auto", "safetensors", default) == default
    assert choose_engine("auto", "gguf", default) == "llamacpp"
    assert choose_engine("tgi", "safetensors", default) == "tgi"  # a named engine wins over the default


def test_auto_keeps_the_engine_it_chose_across_a_follow_recheck():
    """A revisionPolicy Follow re-check of the same spec.model and engine.type keeps the engine:
    a new defaultEngine moves no model that serves, even when the branch moved."""
    assert choose_engine("auto", "safetensors", "vllm", kept="tgi") == "tgi"
    assert choose_engine("auto", "safetensors", "tgi", kept="sglang") == "sglang"
    assert choose_engine("auto", "safetensors", "vllm", kept="llamacpp") == "vllm"  # the weights became safetensors
    assert choose_engine("auto", "gguf", "vllm", kept="tgi") == "llamacpp"  # ... or GGUF
    assert choose_engine("sglang", "safetensors", "tgi", kept="tgi") == "sglang"  # (engine.type is in the hash)


@pytest.mark.parametrize("moved", [False, True])
def test_a_follow_recheck_keeps_the_engine_when_the_default_engine_changed(moved):
    import asyncio

    from modelship.reconcile.controller import Controller, source_hash
    from modelship.reconcile.metrics import ControllerMetrics

    md = make_md({"model": {"repo": "org/tiny", "revisionPolicy": "Follow"}})
    pinned = safetensors().model_copy(update={"source_hash": source_hash(md.spec), "resolved_at": None})
    md = make_md(md.spec.wire(), status={"resolved": pinned.wire()})
    fresh = safetensors().model_copy(update={"sha": ("e" if moved else "d") * 40, "engine": None})

    class Resolver:
        def resolve(self, *_):
            return fresh

    controller = Controller(Settings(default_engine="vllm"), None, Resolver(), ControllerMetrics())
    resolved = asyncio.run(controller._resolve(md))
    assert (resolved.engine, resolved.sha, resolved.moved_from) == (
        "tgi", fresh.sha, "d" * 40 if moved else None)
    # a new spec.model takes the default
    other = make_md({"model": {"repo": "org/other", "revisionPolicy": "Follow"}}, status={"resolved": pinned.wire()})
    assert asyncio.run(controller._resolve(other)).engine == "vllm"


@pytest.mark.parametrize("requested", ["tgi", "vllm", "sglang"])
def test_a_gpu_engine_named_for_gguf_files_names_llamacpp(requested):
    with pytest.raises(SpecError) as e:
        choose_engine(requested, "gguf", "vllm")
    assert (e.value.reason, e.value.message) == ("EngineMismatch", (
        f"engine.type is {requested}, but the resolved files are GGUF, which llama.cpp serves: use engine.type "
        f"llamacpp (or auto), or a safetensors repo"))


def test_settings_the_default_engine_lacks_are_refused_under_auto():
    """defaultEngine vllm: the controller resolved engine.type auto to vllm."""
    md = make_md({"model": {"repo": "org/tiny"}, "serving": {"maxInputTokens": 100, "gpuMemoryUtilization": 0.8}})
    p = run(md, safetensors().model_copy(update={"engine": "vllm"}), Observed())
    ready = cond(p, "Ready")
    assert p.actions == [] and (ready["reason"], ready["message"]) == ("SettingNotForEngine", (
        "serving.maxInputTokens is a TGI setting, but the model is served by vLLM (safetensors weights), which "
        "would ignore it: remove it, or set engine.type to tgi"))
    # and what vLLM has, TGI lacks, when TGI is the default
    p = run(make_md({"model": {"repo": "org/tiny"}, "serving": {"gpuMemoryUtilization": 0.8}}), safetensors(),
            Observed())
    assert cond(p, "Ready")["message"] == (
        "serving.gpuMemoryUtilization is a vLLM and SGLang setting, but the model is served by TGI (safetensors "
        "weights), which would ignore it: remove it, or set engine.type to vllm or sglang")


@pytest.mark.parametrize("engine,quantize,message", [
    ("vllm", "eetq", "serving.quantize eetq is a TGI method, but the model is served by vLLM (safetensors weights), "
                     "which does not have it: choose another, or set engine.type to tgi"),
    ("vllm", "bitsandbytes", "serving.quantize bitsandbytes is a TGI and SGLang method, but the model is served by "
                             "vLLM (safetensors weights), which does not have it: choose another, or set engine.type "
                             "to tgi or sglang"),
    ("sglang", "marlin", "serving.quantize marlin is a TGI method, but the model is served by SGLang (safetensors "
                         "weights), which does not have it: choose another, or set engine.type to tgi"),
])
def test_a_quantization_the_default_engine_lacks_is_refused_under_auto(engine, quantize, message):
    """defaultEngine vllm or sglang: engine.type auto resolved to it; the engine would exit on
    the unknown --quantization and crash-loop."""
    md = make_md({"model": {"repo": "org/tiny"}, "serving": {"quantize": quantize}})
    p = run(md, safetensors().model_copy(update={"engine": engine}), Observed())
    ready = cond(p, "Ready")
    assert p.actions == [] and (ready["reason"], ready["message"]) == ("SettingNotForEngine", message)
    # what the engine has passes
    p = run(make_md({"model": {"repo": "org/tiny"}, "serving": {"quantize": "gptq"}}),
            safetensors().model_copy(update={"engine": engine}), Observed())
    assert cond(p, "Ready")["reason"] != "SettingNotForEngine"


@pytest.mark.parametrize("engine,name", [("vllm", "vLLM"), ("sglang", "SGLang")])
def test_vllm_and_sglang_need_a_gpu_and_default_to_one(engine, name):
    r = safetensors().model_copy(update={"engine": engine})
    assert place(make_md({"model": {"repo": "org/tiny"}}), engine, settings()).gpus == 1
    p = run(make_md({"model": {"repo": "org/tiny"}, "gpus": 0}), r, Observed())
    assert (cond(p, "Ready")["reason"], cond(p, "Ready")["message"]) == (
        "GPUsRequired", f"{name} needs at least one GPU: set gpus to 1 or more")


@pytest.mark.parametrize("requested,fmt", [("llamacpp", "safetensors"), ("tgi", "gguf")])
def test_choose_engine_mismatch(requested, fmt):
    with pytest.raises(SpecError) as e:
        choose_engine(requested, fmt)
    assert e.value.reason == "EngineMismatch"
    assert requested in e.value.message


# --- ownership, remembered downloads, revision changes -----------------------------------------


def test_objects_of_the_same_name_that_are_not_ours_are_never_taken_over():
    md, r = make_md(), gguf()
    p = run(md, r, Observed(conflicts=[f"Service {NAME}"]))
    assert p.actions == [] and p.status["phase"] == "Failed" and p.requeue_after is None
    ready = cond(p, "Ready")
    assert ready["reason"] == "ResourceConflict" and f"Service {NAME}" in ready["message"]


def test_a_completed_download_is_remembered_after_its_job_is_deleted():
    md, r = make_md(), gguf()
    first = run(md, r, observed(md, r, job_state="Complete"))
    job = first.status["download"]["completedJob"]
    assert job == manifests.download_job(md, r, ENDPOINT, settings())["metadata"]["name"]
    later = make_md(status=first.status)
    obs = Observed(pvc=obs_pvc(md, r), jobs=[], service=obs_service(md), deployment=obs_deployment(md, r))
    p = run(later, r, obs)
    assert not any(a.kind == "Job" for a in p.actions)  # no second download
    assert cond(p, "Downloaded")["status"] == "True" and p.status["phase"] == "Ready"


def test_a_new_revision_downloads_next_to_the_served_one_on_its_node():
    md = make_md()
    big = 5 * 1024 ** 3
    old = gguf().model_copy(update={"total_bytes": big, "files": [
        gguf().files[0].model_copy(update={"size": big})]})
    new = old.model_copy(update={"sha": "e" * 40, "short_sha": "eeeeeee"})
    serving = obs_deployment(md, old)
    pod = {"metadata": {"name": f"{NAME}-abc"}, "spec": {"nodeName": "node-7"}, "status": {}}
    obs = Observed(pvc=obs_pvc(md, old), jobs=[obs_job(md, old, "Complete")], service=obs_service(md),
                   deployment=serving, pods=[pod])
    p = run(md, new, obs)
    kinds = {a.kind: a for a in p.actions if a.verb == "apply"}
    # The volume grows to hold both revisions; the served Deployment is left alone meanwhile.
    want = manifests.volume_size(2 * big, settings().storage_margin_percent)
    assert want == "11Gi"
    assert kinds["PersistentVolumeClaim"].body["spec"]["resources"]["requests"]["storage"] == want
    assert "Deployment" not in kinds and cond(p, "Available")["status"] == "True"
    # The new Job runs where the ReadWriteOnce volume is attached.
    affinity = kinds["Job"].body["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    assert affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0][
        "values"] == ["node-7"]
    assert ("delete", "Job") in {(a.verb, a.kind) for a in p.actions}  # the old revision's Job goes


def test_a_child_changed_by_hand_is_put_back():
    md, r = make_md(), gguf()
    dep = obs_deployment(md, r)
    dep["spec"]["replicas"] = 3  # kubectl scale deployment/... behind the operator's back
    dep["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/termination-log"  # default
    p = run(md, r, observed(md, r, job_state="Complete", deployment=dep))
    assert applied(p) == {("Deployment", NAME)} and p.actions[0].exists
    # Fields only the API server added are not drift.
    dep["spec"]["replicas"] = 1
    assert run(md, r, observed(md, r, job_state="Complete", deployment=dep)).actions == []


def test_download_progress_and_the_last_failure_come_from_the_jobs_pods():
    md, r = make_md(), gguf()
    job = obs_job(md, r, "Running")
    name = job["metadata"]["name"]
    obs = observed(md, r, job_state="Running")
    obs.download_progress = {name: {"event": "progress", "done": GGUF_BYTES // 4, "total": GGUF_BYTES, "eta": 12}}
    obs.download_errors = {name: "Error: cannot download x: ConnectError"}
    p = run(md, r, obs)
    assert p.status["download"] == {"job": name, "bytesDone": GGUF_BYTES // 4, "bytesTotal": GGUF_BYTES,
                                    "percent": 25, "etaSeconds": 12}
    msg = cond(p, "Downloaded")["message"]
    assert "23.8 MiB of 95.4 MiB (25%), about 12 s left" in msg and "last attempt: Error: cannot download" in msg
    assert p.requeue_after and p.requeue_after <= 5
    failed = observed(md, r, job_state="Failed")
    failed.download_errors = {name: "Error: x.gguf: sha256 ... (twice): the source serves corrupt data"}
    assert "the source serves corrupt data" in cond(run(md, r, failed), "Ready")["message"]


def test_the_shared_cache_refuses_files_from_an_endpoint_of_ones_own():
    md, r = make_md({"model": {"repo": "org/tiny-GGUF", "endpoint": "http://my-hub:8080"},
                     "storage": {"sharedCache": True}}), gguf()
    p = run(md, r, Observed())
    assert p.actions == [] and cond(p, "Ready")["reason"] == "SharedCacheEndpoint"


def test_the_download_prunes_a_volume_of_its_own_keeping_the_served_revision():
    md, old = make_md(), gguf()
    new = gguf().model_copy(update={"sha": "e" * 40})
    obs = Observed(pvc=obs_pvc(md, old), jobs=[], service=obs_service(md), deployment=obs_deployment(md, old))
    job = next(a.body for a in run(md, new, obs).actions if a.kind == "Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--prune"):] == ["--prune", "--keep", f"org/tiny-GGUF@{'a' * 40}"]
    for storage in ({"sharedCache": True}, {"existingClaim": "mine"}):  # others' files, or the user's
        other = make_md({"storage": storage})
        job = manifests.download_job(other, new, ENDPOINT, settings())
        assert "--prune" not in job["spec"]["template"]["spec"]["containers"][0]["args"]


# --- collecting snapshots nothing uses any more ------------------------------------------------


def after_rollout(md, old, new, pods_revisions=None, jobs=None, collect_jobs=None, in_use=None):
    """`new` downloaded and served; the volume's ledger still names `old` too."""
    pvc = obs_pvc(md, new)
    for r in (old, new):
        key = manifests.snapshot_key(r.repo, r.sha)
        pvc["metadata"]["annotations"][manifests.ledger_annotation(key)] = key
    pods = [{"metadata": {"name": f"{NAME}-{i}", "annotations": {manifests.REPO: r.repo, manifests.REVISION: r.sha}},
             "spec": {"nodeName": "node-7"}, "status": {"phase": "Running"}}
            for i, r in enumerate(pods_revisions or [new])]
    volume_in_use = ({manifests.snapshot_key(r.repo, r.sha) for r in (pods_revisions or [new])}
                     if in_use is None else in_use)
    return Observed(pvc=pvc, jobs=[obs_job(md, new, "Complete")] if jobs is None else jobs,
                    service=obs_service(md), deployment=obs_deployment(md, new), pods=pods,
                    collect_jobs=collect_jobs or [], volume_in_use=volume_in_use)


def old_and_new():
    old = gguf()
    return old, old.model_copy(update={"sha": "e" * 40, "short_sha": "eeeeeee"})


def test_after_a_rollout_the_old_snapshot_is_collected_on_the_volumes_node():
    md = make_md()
    old, new = old_and_new()
    p = run(md, new, after_rollout(md, old, new))
    jobs = [a.body for a in p.actions if a.kind == "Job" and a.verb == "apply"]
    assert len(jobs) == 1 and jobs[0]["metadata"]["name"].startswith(f"{NAME}-collect-")
    spec = jobs[0]["spec"]["template"]["spec"]
    assert spec["containers"][0]["args"] == ["collect", "--dest", "/models", "--user", NS,
                                             "--keep", f"org/tiny-GGUF@{new.sha}"]
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node-7"]  # where the RWO volume is attached
    assert jobs[0]["metadata"]["labels"]["app.kubernetes.io/component"] == "collect"
    assert p.status["phase"] == "Ready"  # serving is not held up by it


@pytest.mark.parametrize("why", ["old pods still run", "unknown pods", "download running"])
def test_nothing_is_collected_while_something_may_still_read_it(why):
    md = make_md()
    old, new = old_and_new()
    if why == "old pods still run":  # the old ReplicaSet's pod, until it is gone
        obs = after_rollout(md, old, new, pods_revisions=[new, old])
    elif why == "unknown pods":
        obs = after_rollout(md, old, new, in_use=None)
        obs.volume_in_use = None
    else:  # another ModelDeployment's download on the shared volume
        md = make_md({"storage": {"sharedCache": True}})
        other = gguf().model_copy(update={"repo": "org/other-GGUF", "sha": "f" * 40})
        obs = after_rollout(md, old, new, jobs=[obs_job(md, new, "Complete"), obs_job(md, other, "Running")])
    p = run(md, new, obs)
    assert not [a for a in p.actions if a.kind == "Job" or a.verb == "annotate"]


def test_a_finished_collection_updates_the_ledger_and_goes():
    md = make_md()
    old, new = old_and_new()
    job = manifests.collect_job(md, settings(), [manifests.snapshot_key(new.repo, new.sha)])
    job["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    p = run(md, new, after_rollout(md, old, new, collect_jobs=[job]))
    old_key = manifests.snapshot_key(old.repo, old.sha)
    assert [(a.verb, a.kind, a.body if a.verb == "annotate" else a.name) for a in p.actions] == [
        ("annotate", "PersistentVolumeClaim", {manifests.ledger_annotation(old_key): None}),
        ("delete", "Job", job["metadata"]["name"])]
    assert [old_key in e.message for e in p.events if e.reason == "Collected"] == [True]


def test_a_failed_collection_is_reported_and_not_retried_until_its_job_is_deleted():
    md = make_md()
    old, new = old_and_new()
    job = manifests.collect_job(md, settings(), [manifests.snapshot_key(new.repo, new.sha)])
    job["status"] = {"failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                  "message": "Job has reached the specified backoff limit"}]}
    p = run(md, new, after_rollout(md, old, new, collect_jobs=[job]))
    assert p.actions == [] and p.status["phase"] == "Ready"
    msg = cond(p, "Downloaded")["message"]
    assert "removing unused snapshots from the volume failed" in msg and "delete the Job" in msg


def test_a_download_waits_for_a_running_collection():
    md = make_md({"storage": {"sharedCache": True}})
    old, new = old_and_new()
    collecting = manifests.collect_job(md, settings(), ["org/x@" + "1" * 40])
    collecting["status"] = {"active": 1}
    obs = Observed(pvc=obs_pvc(md, old), jobs=[], service=obs_service(md), collect_jobs=[collecting],
                   volume_in_use=set())
    p = run(md, new, obs)
    assert not [a for a in p.actions if a.kind == "Job"]
    d = cond(p, "Downloaded")
    assert d["reason"] == "WaitingForCollection" and collecting["metadata"]["name"] in d["message"]
    collecting["status"] = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
    assert any(a.kind == "Job" and a.verb == "apply" for a in run(md, new, obs).actions)


def test_a_claim_made_again_is_downloaded_to_again():
    md, r = make_md(), gguf()
    first = run(md, r, observed(md, r, job_state="Complete"))
    assert first.status["download"]["volumeUID"] == "pvc-uid-1"
    pvc = obs_pvc(md, r)
    pvc["metadata"]["uid"] = "pvc-uid-2"  # deleted and created again: empty
    p = run(make_md(status=first.status), r, Observed(pvc=pvc, jobs=[], service=obs_service(md),
                                                       deployment=obs_deployment(md, r)))
    assert any(a.kind == "Job" and a.verb == "apply" for a in p.actions)


def test_a_users_claim_has_no_ledger_and_is_never_collected():
    md = make_md({"storage": {"existingClaim": "mine"}})
    old, new = old_and_new()
    obs = after_rollout(md, old, new)
    p = run(md, new, obs)
    assert not [a for a in p.actions if a.kind == "Job" or a.verb == "annotate"]


def test_a_finished_download_whose_files_were_collected_is_downloaded_again():
    """Back to a revision whose snapshot a collection removed: its old Job says Complete, but
    the ledger no longer names it, so the Job goes and the files come again."""
    md, r = make_md({"storage": {"sharedCache": True}}), gguf()
    obs = observed(md, r, job_state="Complete")
    key = manifests.snapshot_key(r.repo, r.sha)
    del obs.pvc["metadata"]["annotations"][manifests.ledger_annotation(key)]  # collected
    p = run(md, r, obs)
    job = manifests.download_job(md, r, ENDPOINT, settings())["metadata"]["name"]
    assert [(a.verb, a.kind) for a in p.actions if a.kind != "Service"] == [
        ("annotate", "PersistentVolumeClaim"), ("delete", "Job")]
    assert p.actions[-1].name == job and p.status["phase"] == "Downloading"
    assert "no longer on volume" in cond(p, "Downloaded")["message"]
    assert "completedJob" not in p.status["download"]
    # Once the Job is gone, it is created again (and the Deployment waits for it).
    obs.jobs = []
    obs.pvc["metadata"]["annotations"][manifests.ledger_annotation(key)] = key
    again = run(make_md(md.spec.wire(), status=p.status), r, obs)
    assert applied(again) >= {("Job", job)} and ("Deployment", NAME) not in applied(again)


def test_a_users_claim_made_again_under_a_complete_job_is_downloaded_to_again():
    md, r = make_md({"storage": {"existingClaim": "mine"}}), gguf()
    first = run(md, r, observed(md, r, job_state="Complete"))
    obs = observed(md, r, job_state="Complete")
    obs.pvc["metadata"]["uid"] = "pvc-uid-2"
    p = run(make_md(md.spec.wire(), status=first.status), r, obs)
    assert ("delete", "Job") in {(a.verb, a.kind) for a in p.actions}
    assert "deleted and made again" in cond(p, "Downloaded")["message"]


def test_a_readwriteonce_shared_cache_is_collected_where_it_is_attached():
    md = make_md({"storage": {"sharedCache": True}})
    old, new = old_and_new()
    obs = after_rollout(md, old, new)
    obs.volume_node = "node-3"
    job = next(a.body for a in run(md, new, obs).actions if a.kind == "Job" and a.verb == "apply")
    assert job["metadata"]["name"].startswith("modelship-collect-")
    assert job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node-3"]


def test_serving_settings_the_resolved_engine_cannot_honour_are_refused_not_ignored():
    # engine.type auto: only the resolved format tells which engine serves (the CRD refuses a named one)
    p = run(make_md({"serving": {"dtype": "bfloat16", "maxConcurrentRequests": 8}}), gguf(), Observed())
    ready = cond(p, "Ready")
    assert p.actions == [] and (ready["status"], ready["reason"]) == ("False", "SettingNotForEngine")
    assert ready["message"] == ("serving.maxConcurrentRequests, serving.dtype are TGI, vLLM and SGLang settings, but "
                                "the model is served by llama.cpp (GGUF weights), which would ignore them: remove "
                                "them, or choose a model in the other format")
    p = run(make_md({"model": {"repo": "org/tiny"}, "serving": {"parallel": 2}}), safetensors(), Observed())
    assert cond(p, "Ready")["message"] == (
        "serving.parallel is a llama.cpp setting, but the model is served by TGI (safetensors weights), which "
        "would ignore it: remove it, or choose a model in the other format")
    # settings both engines honour pass
    p = run(make_md({"serving": {"contextLength": 2048, "generation": {"temperature": 0.2}}}), gguf(), Observed())
    assert cond(p, "Ready")["reason"] != "SettingNotForEngine"


def test_every_job_name_fits_a_label_value_for_the_longest_name_the_crd_admits():
    from modelship.api import MD_NAME_MAX

    md = ModelDeployment.model_validate({**make_md().model_dump(by_alias=True), "metadata": {
        "name": "m" * MD_NAME_MAX, "namespace": NS, "uid": "0000-uid-1", "generation": 1}})
    download = manifests.download_job(md, gguf(), ENDPOINT, settings())["metadata"]["name"]
    collect = manifests.collect_job(md, settings(), ["org/tiny-GGUF@" + "a" * 40])["metadata"]["name"]
    assert len(download) == 63 and download.startswith("m" * MD_NAME_MAX + "-fetch-")
    assert len(collect) == 63 and collect.startswith("m" * MD_NAME_MAX + "-collect-")
    # a shorter name keeps the 8 hex digits it always had
    assert len(manifests.collect_job(make_md(), settings(), [])["metadata"]["name"]) == len(f"{NAME}-collect-") + 8


def test_a_storage_size_below_the_volume_is_said_not_silently_ignored():
    r = gguf()
    md = make_md({"storage": {"size": "1Gi"}})
    obs = Observed(pvc=obs_pvc(md, r, size="5Gi"), jobs=[obs_job(md, r, "Running")], service=obs_service(md))
    p = run(md, r, obs)
    assert not any(a.kind == "PersistentVolumeClaim" for a in p.actions)  # never shrunk
    assert cond(p, "Downloaded")["message"].endswith(
        "; storage.size 1Gi is below the volume's 5Gi, and a volume cannot shrink: it stays at 5Gi (delete the "
        "ModelDeployment to start with a smaller one)")
    # the size the volume has: nothing to say
    assert "cannot shrink" not in cond(run(md, r, observed(md, r)), "Downloaded")["message"]

"""The rules that turn what the API server showed into the observed state (`reconcile/observe.py`),
one test each, on objects shaped as the API server sends them."""

from __future__ import annotations

import json

import pytest

from modelship.api import ModelDeployment
from modelship.manifests import COMPONENT, DEPLOYMENT_LABEL, REPO, REVISION, SHARED_CACHE, SHARED_CLAIM
from modelship.reconcile import observe
from modelship.reconcile.types import JobPods, Reads

UID = "uid-mine"


def md(storage: dict | None = None, resolved: dict | None = None) -> ModelDeployment:
    raw = {"metadata": {"name": "m", "namespace": "ns", "uid": UID, "generation": 1},
           "spec": {"model": {"repo": "org/m"}, "storage": storage or {}}}
    if resolved:
        raw["status"] = {"resolved": {"repo": "org/m", "revision": "main", "sha": "a" * 40, "engine": "llamacpp",
                                      "format": "gguf", **resolved}}
    return ModelDeployment.model_validate(raw)


def obj(name: str, owner: str | None = UID, labels: dict | None = None, **extra) -> dict:
    meta = {"name": name, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"uid": owner, "kind": "ModelDeployment", "name": "x"}]
    return {"metadata": meta, **extra}


def job(name: str, component: str = "download", owner: str | None = UID, conditions: list | None = None) -> dict:
    return obj(name, owner, {COMPONENT: component}, status={"conditions": conditions or []})


def pod(name: str, claim: str = "m-weights", phase: str = "Running", node: str | None = "n1",
        revision: tuple[str, str] | None = ("org/m", "a" * 40), deployment: str = "m") -> dict:
    p = obj(name, None, {DEPLOYMENT_LABEL: deployment}, spec={"volumes": [{"persistentVolumeClaim": {"claimName": claim}}]},
            status={"phase": phase})
    if node:
        p["spec"]["nodeName"] = node
    if revision:
        p["metadata"]["annotations"] = {REPO: revision[0], REVISION: revision[1]}
    return p


# --- Jobs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("conditions,state", [
    ([], ("Running", "")),
    ([{"type": "Complete", "status": "True"}], ("Complete", "")),
    ([{"type": "SuccessCriteriaMet", "status": "True"}], ("Complete", "")),
    ([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "too many"}],
     ("Failed", "BackoffLimitExceeded: too many")),
    ([{"type": "FailureTarget", "status": "True"}], ("Failed", "Failed")),
    ([{"type": "Complete", "status": "False"}], ("Running", "")),
])
def test_a_job_is_finished_by_its_conditions(conditions, state):
    assert observe.job_state(job("j", conditions=conditions)) == state
    assert observe.job_state(None) == ("Absent", "")


def test_only_its_own_jobs_work_on_a_volume_of_its_own_but_every_job_of_the_shared_cache():
    jobs = [job("mine"), job("theirs", owner="uid-other"), job("collect", "collect"), job("server", "server")]
    downloads, collections = observe.volume_jobs(md(), jobs)
    assert [j["metadata"]["name"] for j in downloads] == ["mine"]
    assert [j["metadata"]["name"] for j in collections] == ["collect"]
    downloads, _ = observe.volume_jobs(md({"sharedCache": True}), jobs)
    assert [j["metadata"]["name"] for j in downloads] == ["mine", "theirs"]


def test_only_running_downloads_are_followed():
    done = job("done", conditions=[{"type": "Complete", "status": "True"}])
    reads = Reads(jobs=[job("running"), done, job("c", "collect")])
    assert observe.downloads_to_follow(md(), reads) == ["running"]


# --- what a download says about itself --------------------------------------------------------


def test_progress_is_read_from_the_newest_pod_that_started():
    pods = [obj("old", None, status={"phase": "Failed"}), obj("mid", None, status={"phase": "Running"}),
            obj("new", None, status={"phase": "Pending"})]
    assert observe.progress_pod(pods)["metadata"]["name"] == "mid"
    assert observe.progress_pod([obj("p", None, status={"phase": "Pending"})]) is None


def test_the_last_progress_line_wins_and_other_lines_are_ignored():
    first, last = {"event": "progress", "done": 1}, {"event": "progress", "done": 2}
    log = "\n".join([json.dumps(first), "ok a.gguf", json.dumps(last), '{"event": broken', "retrying b"])
    assert observe.last_progress(log) == last
    assert observe.last_progress("no progress here\n") is None


def terminated(exit_code: int, message: str = "", reason: str = "Error") -> dict:
    return {"containerStatuses": [{"state": {"terminated": {"exitCode": exit_code, "message": message,
                                                            "reason": reason}}}]}


def test_the_last_failed_pods_termination_message_is_the_error():
    pods = [obj("a", None, status=terminated(1, "Error: first")),
            obj("b", None, status=terminated(1, "line one\nError: cannot download x")),
            obj("c", None, status=terminated(0, "done"))]
    assert observe.last_failure(pods) == "Error: cannot download x"
    # A progress line (the log fallback after an OOM kill) explains nothing: the reason does.
    oom = [obj("d", None, status=terminated(137, '{"event": "progress"}', "OOMKilled"))]
    assert observe.last_failure(oom) == "OOMKilled (exit code 137)"
    assert observe.last_failure([obj("e", None, status=terminated(0))]) is None


# --- ownership ---------------------------------------------------------------------------------


def test_objects_with_its_names_that_it_does_not_own_are_conflicts():
    reads = Reads(deployment=obj("m", "uid-other"), service=obj("m"), pvc=obj("m-weights", None))
    assert observe.conflicts(md(), "m-weights", reads) == ["Deployment m", "PersistentVolumeClaim m-weights"]
    # The user's own claim is never a conflict.
    assert observe.conflicts(md({"existingClaim": "mine"}), "mine", Reads(pvc=obj("mine", None))) == []


def test_a_claim_named_like_the_shared_cache_must_be_one():
    cache = md({"sharedCache": True})
    assert observe.conflicts(cache, SHARED_CLAIM, Reads(pvc=obj(SHARED_CLAIM, None))) == [
        f"PersistentVolumeClaim {SHARED_CLAIM} (not a modelship shared cache)"]
    ours = obj(SHARED_CLAIM, "uid-other", {SHARED_CACHE: SHARED_CLAIM})
    assert observe.conflicts(cache, SHARED_CLAIM, Reads(pvc=ours)) == []


# --- what else uses the volume ----------------------------------------------------------------


def neighbour(uid: str, repo: str, sha: str, size: int, shared: bool = True) -> dict:
    return {"metadata": {"uid": uid}, "spec": {"storage": {"sharedCache": shared}},
            "status": {"resolved": {"repo": repo, "sha": sha, "totalBytes": size}}}


def test_the_shared_cache_holds_the_other_users_distinct_snapshots():
    me = md({"sharedCache": True}, resolved={"totalBytes": 10})
    others = [neighbour(UID, "org/m", "a" * 40, 10),  # itself
              neighbour("u2", "org/m", "a" * 40, 10),  # the same snapshot as its own: no more room
              neighbour("u3", "org/x", "b" * 40, 5), neighbour("u4", "org/x", "b" * 40, 5),  # once
              neighbour("u5", "org/y", "c" * 40, 7, shared=False)]  # on a volume of its own
    total, in_use = observe.cache_neighbours(me, others)
    assert total == 5
    assert in_use == {f"org/m@{'a' * 40}", f"org/x@{'b' * 40}"}


def test_every_pod_mounting_the_volume_keeps_its_revision_and_says_where_it_is_attached():
    pods = [pod("p1", revision=("org/m", "a" * 40), node="n1"), pod("p2", revision=("org/m", "b" * 40), node="n2"),
            pod("other-claim", claim="x", revision=("org/x", "c" * 40)),
            pod("gone", phase="Succeeded", revision=("org/y", "d" * 40))]
    in_use, node = observe.volume_readers("m-weights", pods, set())
    assert in_use == {f"org/m@{'a' * 40}", f"org/m@{'b' * 40}"} and node == "n1"
    # A pod that does not say what it reads: nothing can be called unused.
    in_use, node = observe.volume_readers("m-weights", [pod("p", revision=None, node=None), pod("q")], set())
    assert in_use is None


def test_observe_keeps_only_its_own_children_and_reads_each_running_download():
    mine, theirs = obj("m-weights"), obj("m-weights", "uid-other")
    reads = Reads(pvc=mine, deployment=obj("m"), service=obj("m", "uid-other"), jobs=[job("j")],
                  server_pods=[pod("p1"), pod("q1", deployment="other")],
                  job_pods={"j": JobPods([obj("p", None, status=terminated(1, "Error: x"))],
                                         '{"event": "progress", "done": 3}')})
    o = observe.observe(md(), "m-weights", reads)
    assert o.pvc is mine and o.deployment is not None and o.service is None
    assert o.conflicts == ["Service m"]
    assert [p["metadata"]["name"] for p in o.pods] == ["p1"]
    assert o.download_progress == {"j": {"event": "progress", "done": 3}} and o.download_errors == {"j": "Error: x"}
    assert o.volume_in_use == {f"org/m@{'a' * 40}"} and o.volume_node == "n1"
    # A volume of its own that another owns is not its volume; the user's claim or the shared cache is.
    assert observe.observe(md(), "m-weights", Reads(pvc=theirs)).pvc is None
    assert observe.observe(md({"existingClaim": "mine"}), "mine", Reads(pvc=theirs)).pvc is theirs

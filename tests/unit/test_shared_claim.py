"""ModelDeployments that name one claim of the user's (`storage.existingClaim`) share the Job
that puts (or checks) one repo@sha there: one download into one volume, not one each racing
over the same files. At most JOB_OWNERS_MAX of them own it; the others follow it, and the
download window wakes them when it changes."""

from __future__ import annotations

import asyncio
import types

import kopf

from modelship import manifests
from modelship.api import ModelDeployment
from modelship.reconcile import handlers
from modelship.reconcile.download import JOB_OWNERS_MAX
from modelship.reconcile.types import Observed
from modelship.reconcile.window import DownloadWindow

from .test_plan import ENDPOINT, NS, cond, gguf, obs_job, obs_service, run, settings


def claim_md(name: str, uid: str, claim: str = "models", spec: dict | None = None) -> ModelDeployment:
    return ModelDeployment.model_validate({
        "apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": NS, "uid": uid, "generation": 1},
        "spec": {"model": {"repo": "org/tiny-GGUF"}, "storage": {"existingClaim": claim}, **(spec or {})}})


def job_of(md: ModelDeployment) -> dict:
    return manifests.download_job(md, gguf(), ENDPOINT, settings())


def users_claim(name: str = "models") -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": NS, "uid": "claim-uid"},
            "spec": {"resources": {"requests": {"storage": "10Gi"}}}, "status": {"phase": "Bound"}}


def owned_by_many(job: dict, n: int) -> dict:
    job["metadata"]["ownerReferences"] = [
        {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "name": f"o{i}", "uid": f"uid-o{i}",
         "controller": False, "blockOwnerDeletion": True} for i in range(n)]
    return job


def test_one_claim_one_repo_sha_one_job_co_owned_and_labelled_by_the_claim():
    a, b = job_of(claim_md("a", "uid-a")), job_of(claim_md("b", "uid-b"))
    assert a["metadata"]["name"] == b["metadata"]["name"]
    assert a["metadata"]["name"].startswith("modelship-fetch-")
    assert a["metadata"]["ownerReferences"][0]["controller"] is False  # co-owned: none controls it
    labels = a["metadata"]["labels"]
    assert labels[manifests.CLAIM_LABEL] == "models" and manifests.DEPLOYMENT_LABEL not in labels
    assert a["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models"
    # Another claim, or another token: another Job.
    assert job_of(claim_md("c", "uid-c", claim="other"))["metadata"]["name"] != a["metadata"]["name"]
    token = {"model": {"repo": "org/tiny-GGUF", "tokenSecretRef": {"name": "hf", "key": "token"}}}
    assert job_of(claim_md("d", "uid-d", spec=token))["metadata"]["name"] != a["metadata"]["name"]


def test_a_claim_name_too_long_for_a_label_is_labelled_by_its_digest():
    long = "c" * 200
    value = job_of(claim_md("a", "uid-a", claim=long))["metadata"]["labels"][manifests.CLAIM_LABEL]
    assert len(value) <= 63 and value == manifests.claim_label(long) != manifests.claim_label("c" * 199)
    assert manifests.claim_label("models") == "models"


def test_another_ones_running_download_on_the_claim_is_joined_not_made_again():
    first, second = claim_md("a", "uid-a"), claim_md("b", "uid-b")
    job = obs_job(first, gguf())  # running, owned by `a`
    p = run(second, gguf(), Observed(pvc=users_claim(), jobs=[job], service=obs_service(second)))
    [apply] = [a for a in p.actions if a.kind == "Job"]
    assert (apply.verb, apply.name, apply.exists) == ("apply", job["metadata"]["name"], True)
    assert apply.field_manager == f"modelship/{NS}/b"  # its own share: every owner keeps its reference
    assert apply.body["metadata"]["ownerReferences"][0]["uid"] == "uid-b"
    assert cond(p, "Downloaded")["reason"] == "Downloading" and p.download_job == job["metadata"]["name"]


def test_a_download_owned_by_enough_others_is_followed_without_a_write():
    md, first = claim_md("late", "uid-late"), claim_md("a", "uid-a")
    job = owned_by_many(obs_job(first, gguf()), JOB_OWNERS_MAX)
    p = run(md, gguf(), Observed(pvc=users_claim(), jobs=[job], service=obs_service(md)))
    assert not [a for a in p.actions if a.kind == "Job"]
    assert p.download_job == job["metadata"]["name"]  # it waits for it (the window knows)
    one_fewer = owned_by_many(obs_job(first, gguf()), JOB_OWNERS_MAX - 1)
    p = run(md, gguf(), Observed(pvc=users_claim(), jobs=[one_fewer], service=obs_service(md)))
    assert [(a.verb, a.kind) for a in p.actions if a.kind == "Job"] == [("apply", "Job")]


def test_a_finished_shared_download_is_used_by_all_and_joined_by_none():
    md = claim_md("b", "uid-b")
    job = obs_job(claim_md("a", "uid-a"), gguf(), "Complete")
    p = run(md, gguf(), Observed(pvc=users_claim(), jobs=[job], service=obs_service(md)))
    assert not [a for a in p.actions if a.kind == "Job"]
    assert cond(p, "Downloaded")["status"] == "True"
    assert p.status["download"]["completedJob"] == job["metadata"]["name"]
    assert ("Deployment", "b") in {(a.kind, a.name) for a in p.actions if a.verb == "apply"}


def test_stale_jobs_on_a_users_claim_go_only_when_it_alone_owns_them():
    md = claim_md("a", "uid-a")
    current = obs_job(md, gguf(), "Complete")

    def stale(name: str, owners: list[str]) -> dict:
        job = obs_job(md, gguf(), "Complete")
        job["metadata"]["name"] = name
        job["metadata"]["ownerReferences"] = [{"kind": "ModelDeployment", "name": o, "uid": f"uid-{o}"}
                                              for o in owners]
        return job

    jobs = [current, stale("a-fetch-0ld", ["a"]),  # its own, from before Jobs on a claim were shared
            stale("modelship-fetch-shared", ["a", "b"]),  # another still owns it
            stale("modelship-fetch-others", ["b"])]  # not its own
    p = run(md, gguf(), Observed(pvc=users_claim(), jobs=jobs, service=obs_service(md)))
    assert [(a.verb, a.name) for a in p.actions if a.kind == "Job"] == [("delete", "a-fetch-0ld")]


def test_a_download_job_on_a_claim_wakes_its_owners_and_every_follower():
    seen: list[tuple[str, str]] = []
    window = DownloadWindow(1, lambda ns, name: None)
    job = owned_by_many(job_of(claim_md("a", "uid-a")), 2)
    name = job["metadata"]["name"]
    for follower in ("f1", "f2"):
        assert window.take((NS, follower), name)  # one place for them all: the Job is in flight
    assert window.followers(NS, name) == {(NS, "f1"), (NS, "f2")} and window.followers(NS, "other") == set()
    assert not window.take((NS, "g"), "another-job")  # (the window of 1 is full)
    controller = types.SimpleNamespace(kube=types.SimpleNamespace(cache=None), window=window,
                                       enqueue_soon=lambda ns, md: seen.append((ns, md)))
    asyncio.run(handlers.child_changed(labels=job["metadata"]["labels"], namespace=NS, meta=job["metadata"],
                                       event={"type": "MODIFIED", "object": job}, memo=kopf.Memo(controller=controller),
                                       resource=kopf.Resource("batch", "v1", "jobs")))
    assert sorted(seen) == [(NS, "f1"), (NS, "f2"), (NS, "o0"), (NS, "o1")]


def test_a_model_on_a_users_claim_reads_every_job_on_it_and_its_own_older_ones():
    """From the watch cache: the Jobs labelled with its claim (whoever made them) and those
    labelled with its name (an older operator's, one each: stale now), not another claim's."""
    from kubernetes import client

    from modelship.reconcile.cache import WatchCache
    from modelship.reconcile.kube import Kube

    md = claim_md("a", "uid-a")
    cache = WatchCache(("Job", "Pod", "PersistentVolumeClaim", "Deployment", "Service"),
                       whole={"PersistentVolumeClaim"})
    shared, other_claim = job_of(claim_md("b", "uid-b")), job_of(claim_md("c", "uid-c", claim="elsewhere"))
    own_old = {"metadata": {"name": "a-fetch-0ld", "namespace": NS, "labels": {
        manifests.DEPLOYMENT_LABEL: "a", manifests.COMPONENT: "download", manifests.MANAGED_BY: "modelship"}}}
    for kind, items in (("Job", [shared, other_claim, own_old]), ("Pod", []), ("PersistentVolumeClaim", []),
                        ("Deployment", [{"metadata": {"name": "a", "namespace": NS}}]),
                        ("Service", [{"metadata": {"name": "a", "namespace": NS}}])):
        cache.replace(kind, NS, [{**o, "metadata": {**o["metadata"], "resourceVersion": "1"}} for o in items], "1")
    kube = Kube(client.ApiClient(), "modelship", cache)
    try:
        reads = kube.read(md, "models")  # (all from the cache: nothing is asked of an API server)
    finally:
        kube.readers.shutdown()
    assert sorted(j["metadata"]["name"] for j in reads.jobs) == sorted([shared["metadata"]["name"], "a-fetch-0ld"])


def test_a_full_volume_under_a_shared_job_is_retried_by_an_owner_not_by_every_follower():
    from .test_volume_full import full_job

    owner, follower = claim_md("a", "uid-a"), claim_md("b", "uid-b")
    job = full_job(owner, gguf())
    job["metadata"]["uid"] = "job-uid-1"
    for md, deletes in ((owner, [("delete", job["metadata"]["name"], {"uid": "job-uid-1"})]), (follower, [])):
        p = run(md, gguf(), Observed(pvc=users_claim(), jobs=[job], service=obs_service(md)),
                now="2025-01-01T00:01:00Z")
        assert cond(p, "Downloaded")["reason"] == "VolumeFull" and p.failed_job == job["metadata"]["name"]
        assert [(a.verb, a.name, a.body) for a in p.actions if a.kind == "Job"] == deletes


def test_a_stale_job_another_model_waits_for_is_not_deleted():
    from modelship.reconcile.plan import plan

    md = claim_md("a", "uid-a")
    old = obs_job(md, gguf())  # running, its alone
    old["metadata"]["name"] = "modelship-fetch-0ld"
    window = DownloadWindow(0, lambda ns, name: None)
    obs = Observed(pvc=users_claim(), jobs=[obs_job(md, gguf(), "Complete"), old], service=obs_service(md))
    assert [a.name for a in plan(md, gguf(), obs, settings(), "2025-01-01T00:00:00Z", ENDPOINT, window=window).actions
            if a.verb == "delete"] == ["modelship-fetch-0ld"]
    window.take((NS, "b"), "modelship-fetch-0ld")  # another follows it
    assert not [a for a in plan(md, gguf(), obs, settings(), "2025-01-01T00:00:00Z", ENDPOINT, window=window).actions
                if a.verb == "delete"]


class Jobs:
    """The client's Job deletes, answered as the API server would with a uid precondition."""

    def __init__(self, uid: str):
        self.uid, self.deleted = uid, []

    def delete_namespaced_job(self, name, namespace, body):
        from kubernetes.client.rest import ApiException

        if body.preconditions is not None and body.preconditions.uid != self.uid:
            raise ApiException(status=409, reason="Conflict: Precondition failed: UID in precondition")
        self.deleted.append((name, body.propagation_policy))


def test_a_job_is_deleted_only_if_it_is_still_the_one_that_was_read():
    from kubernetes import client

    from modelship.reconcile.kube import Kube
    from modelship.reconcile.types import Action

    kube = Kube(client.ApiClient(), "modelship")
    kube.batch = Jobs("made-again")
    assert kube.execute(Action("delete", "Job", "j", {"uid": "read-before"}, exists=True), NS) is False
    assert kube.batch.deleted == []  # made again under its name meanwhile: it stays
    kube.execute(Action("delete", "Job", "j", {"uid": "made-again"}, exists=True), NS)
    assert kube.batch.deleted == [("j", "Background")]
    kube.readers.shutdown()


def test_a_follower_whose_job_went_with_its_owners_makes_it_again():
    """Every owner deleted while the download ran: the garbage collector took the Job with
    them, and the next reconcile of a ModelDeployment that followed it makes it again (the
    files already on the claim are kept: it resumes)."""
    md = claim_md("late", "uid-late")
    job = owned_by_many(obs_job(claim_md("a", "uid-a"), gguf()), JOB_OWNERS_MAX)
    obs = Observed(pvc=users_claim(), jobs=[job], service=obs_service(md))
    following = run(md, gguf(), obs)
    assert not [a for a in following.actions if a.kind == "Job"]
    obs.jobs = []  # gone with its owners
    again = run(ModelDeployment.model_validate({**md.model_dump(by_alias=True, exclude_none=True),
                                                "status": following.status}), gguf(), obs)
    [make] = [a for a in again.actions if a.kind == "Job"]
    assert (make.verb, make.name, make.exists) == ("apply", job["metadata"]["name"], False)
    assert make.body["metadata"]["ownerReferences"][0]["uid"] == "uid-late"  # its own now
    assert again.download_job == job["metadata"]["name"] and cond(again, "Downloaded")["reason"] == "Downloading"


def test_the_followers_of_a_failed_shared_job_are_woken_when_it_is_deleted_to_retry():
    """A failed Job takes no place in the window, but whoever waits for it to be deleted and
    made again (the user's fix) is woken by its deletion, owner of it or not: none of them
    says `DownloadFailed` until its next resync while the retry runs."""
    from modelship.reconcile.plan import plan

    seen: list[tuple[str, str]] = []
    window = DownloadWindow(1, lambda ns, name: None)
    follower = claim_md("b", "uid-b")
    job = owned_by_many(obs_job(claim_md("a", "uid-a"), gguf(), "Failed", "pod failed"), JOB_OWNERS_MAX)
    name = job["metadata"]["name"]
    p = plan(follower, gguf(), Observed(pvc=users_claim(), jobs=[job], service=obs_service(follower)), settings(),
             "2025-01-01T00:00:00Z", ENDPOINT, window=window)
    assert cond(p, "Downloaded")["reason"] == "DownloadFailed" and (p.download_job, p.failed_job) == (None, name)
    window.settle((NS, "b"), p.download_job, p.failed_job)
    assert window.in_flight == 0 and window.take((NS, "c"), "another-job")  # it holds no place
    assert window.followers(NS, name) == {(NS, "b")}
    controller = types.SimpleNamespace(kube=types.SimpleNamespace(cache=None), window=window,
                                       enqueue_soon=lambda ns, md: seen.append((ns, md)))
    asyncio.run(handlers.child_changed(labels=job["metadata"]["labels"], namespace=NS, meta=job["metadata"],
                                       event={"type": "DELETED", "object": job}, memo=kopf.Memo(controller=controller),
                                       resource=kopf.Resource("batch", "v1", "jobs")))
    assert (NS, "b") in seen and len(seen) == JOB_OWNERS_MAX + 1
    window.settle((NS, "b"), name)  # its next reconcile makes (or joins) the Job again: it waits for that one now
    assert window.followers(NS, name) == {(NS, "b")} and window.failed == {}
    window.forget((NS, "b"))
    assert window.followers(NS, name) == set() and window.known() == {(NS, "c")}


def test_a_failed_job_its_only_owner_left_for_a_new_revision_is_deleted_for_its_followers():
    """Its only owner moved to another revision: the failed Job it leaves behind goes (its
    followers cannot delete it, and its deletion wakes them to make it again), unlike a
    running one they wait for."""
    from modelship.reconcile.plan import plan

    from .test_volume_full import full_job

    owner, follower = claim_md("a", "uid-a"), claim_md("b", "uid-b")
    job = full_job(owner, gguf())
    job["metadata"]["uid"] = "job-uid-1"
    window = DownloadWindow(0, lambda ns, name: None)
    window.settle((NS, "b"), None, job["metadata"]["name"])
    newer = gguf().model_copy(update={"sha": "c" * 40, "short_sha": "ccccccc"})
    obs = Observed(pvc=users_claim(), jobs=[job], service=obs_service(owner))
    p = plan(owner, newer, obs, settings(), "2025-01-01T00:00:10Z", ENDPOINT, window=window)
    assert [(a.verb, a.name) for a in p.actions if a.kind == "Job" and a.verb == "delete"] == \
        [("delete", job["metadata"]["name"])]
    window.settle((NS, "b"), job["metadata"]["name"])  # had it been running, and followed:
    job["status"] = {"active": 1}
    p = plan(owner, newer, obs, settings(), "2025-01-01T00:00:10Z", ENDPOINT, window=window)
    assert not [a for a in p.actions if a.kind == "Job" and a.verb == "delete"]


def test_a_reconcile_tells_the_window_the_failed_job_it_waits_for(monkeypatch):
    """The controller hands the plan's failed Job to the window (`settle`), as it does the Job
    in flight."""
    from modelship.reconcile import controller as controller_mod
    from modelship.reconcile.types import Plan

    from .test_controller_writes import Controller, ControllerMetrics, Kube, Resolver, Settings, stub_steps

    controller = Controller(Settings(), Kube(), Resolver(0), ControllerMetrics())
    stub_steps(monkeypatch, controller)
    monkeypatch.setattr(controller_mod, "plan", lambda *a: Plan([], {"phase": "Failed"}, failed_job="modelship-fetch-x"))
    md = claim_md("b", "uid-b")
    asyncio.run(controller._reconcile((NS, "b"), md, {}, gguf()))
    assert controller.window.followers(NS, "modelship-fetch-x") == {(NS, "b")}
    assert controller.window.followers(NS, "modelship-fetch-x", failed=False) == set()

"""What the reconcile loop does not ask the API server twice: a Deployment or Service found
absent (a model's Deployment does not exist until its weights are in: every reconcile of a
download used to GET it), and the log tail of a pod that finished. Neither memo may let the
operator take over an object someone else made meanwhile."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from cachetools import TTLCache
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelship.reconcile import kube as kube_mod
from modelship.reconcile.kube import Kube
from modelship.reconcile.types import Action


class Apps:
    def __init__(self):
        self.existing: dict | None = None
        self.reads, self.patches = 0, 0

    def read_namespaced_deployment(self, name, namespace, _preload_content=True, **_):
        self.reads += 1
        if self.existing is None:
            raise ApiException(status=404, reason="Not Found")
        return self.existing if _preload_content else SimpleNamespace(data=json.dumps(self.existing).encode())

    def list_namespaced_deployment(self, namespace, field_selector, _preload_content=True, **_):
        """By name (`Kube._named`, before a create): what `read_namespaced_deployment` finds, as a list."""
        name = field_selector.split("=", 1)[1]
        try:
            items = [self.read_namespaced_deployment(name, namespace)]
        except ApiException:
            items = []
        return SimpleNamespace(data=json.dumps({"metadata": {}, "items": items}).encode())

    def patch_namespaced_deployment(self, name, namespace, body, **_):
        self.patches += 1
        return SimpleNamespace(data=json.dumps(body).encode())


class Core:
    def __init__(self):
        self.log_reads = 0

    def read_namespaced_pod_log(self, name, namespace, **_):
        self.log_reads += 1
        return SimpleNamespace(data=f"log of {name} #{self.log_reads}\n".encode())

    def read_namespaced_persistent_volume_claim(self, name, namespace, **_):
        self.log_reads += 100
        raise ApiException(status=404, reason="Not Found")

    read_namespaced_service = patch_namespaced_service = patch_namespaced_persistent_volume_claim = None


@pytest.fixture
def kube():
    k = Kube(client.ApiClient(), "modelship")
    k.apps, k.core = Apps(), Core()
    k._plain = lambda obj: obj
    yield k
    k.readers.shutdown()


def deployment(kube: Kube):
    return kube._get("Deployment", kube.apps.read_namespaced_deployment, "m", "ns")


def create(kube: Kube):
    body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "m", "namespace": "ns"}}
    kube.execute(Action("apply", "Deployment", "m", body, exists=False), "ns")


def age(kube: Kube, seconds: float):
    kube.absent[("Deployment", "ns", "m")] = time.monotonic() - seconds


def test_an_absent_deployment_is_asked_for_once_and_again_before_it_is_made(kube):
    assert deployment(kube) is None and deployment(kube) is None and deployment(kube) is None
    assert kube.apps.reads == 1
    age(kube, kube_mod.FRESH_FOR + 1)
    create(kube)
    assert (kube.apps.reads, kube.apps.patches) == (2, 1)  # asked again, still absent: made
    assert ("Deployment", "ns", "m") not in kube.absent


def test_a_404_just_read_is_not_asked_again_before_the_apply(kube):
    assert deployment(kube) is None
    create(kube)
    assert (kube.apps.reads, kube.apps.patches) == (1, 1)


def test_one_made_by_someone_else_meanwhile_is_not_taken_over(kube):
    assert deployment(kube) is None
    kube.apps.existing = {"metadata": {"name": "m", "namespace": "ns"}}  # (no owner reference)
    age(kube, kube_mod.FRESH_FOR + 1)
    with pytest.raises(ApiException) as refused:
        create(kube)
    assert refused.value.status == 409 and "someone else" in refused.value.reason
    assert kube.apps.patches == 0
    # the next reconcile reads it (and reports the conflict): the memo is gone
    assert deployment(kube) == kube.apps.existing and kube.apps.reads == 3


def test_the_memo_expires(kube):
    now = [0.0]
    kube.absent = TTLCache(maxsize=16, ttl=kube_mod.ABSENT_FOR, timer=lambda: now[0])
    assert deployment(kube) is None and deployment(kube) is None and kube.apps.reads == 1
    now[0] += kube_mod.ABSENT_FOR + 1
    assert deployment(kube) is None and kube.apps.reads == 2


def test_an_absent_claim_is_not_remembered(kube):
    for _ in range(2):
        assert kube._get("PersistentVolumeClaim", kube.core.read_namespaced_persistent_volume_claim,
                         "c", "ns") is None
    assert kube.core.log_reads == 200 and not kube.absent


def pod(phase: str, uid: str = "u1") -> dict:
    return {"metadata": {"name": "fetch-abc", "namespace": "ns", "uid": uid}, "status": {"phase": phase}}


def test_a_running_pods_log_is_read_every_time_a_finished_ones_once(kube):
    assert kube.log_tail(pod("Running")) == "log of fetch-abc #1\n"
    assert kube.log_tail(pod("Running")) == "log of fetch-abc #2\n"
    assert kube.log_tail(pod("Succeeded")) == "log of fetch-abc #3\n"
    assert kube.log_tail(pod("Succeeded")) == "log of fetch-abc #3\n"
    assert kube.log_tail(pod("Failed", uid="u2")) == "log of fetch-abc #4\n"  # another pod: its own
    assert kube.core.log_reads == 4


def test_a_finished_pods_log_that_cannot_be_had_is_not_asked_for_again(kube):
    def refused(name, namespace, **_):
        kube.core.log_reads += 1
        raise ApiException(status=500, reason="dial tcp: connection refused")  # no kubelet there

    kube.core.read_namespaced_pod_log = refused
    assert kube.log_tail(pod("Running")) == "" and kube.log_tail(pod("Running")) == ""
    assert kube.core.log_reads == 2  # running: asked again (its log grows)
    assert kube.log_tail(pod("Succeeded")) == "" and kube.log_tail(pod("Succeeded")) == ""
    assert kube.core.log_reads == 3


def test_an_api_server_away_or_busy_is_asked_again_and_every_entry_counts(kube):
    answers = iter([ApiException(status=429, reason="Too Many Requests"), ApiException(status=0, reason="away")])

    def busy(name, namespace, **_):
        kube.core.log_reads += 1
        raise next(answers)

    kube.core.read_namespaced_pod_log = busy
    assert kube.log_tail(pod("Succeeded")) == "" and kube.log_tail(pod("Succeeded")) == ""
    assert kube.core.log_reads == 2 and not kube.final_logs
    # a pod whose log could not be had is kept as "", and still counts against the bound
    kube.core.read_namespaced_pod_log = lambda *a, **k: (_ for _ in ()).throw(ApiException(status=500))
    for i in range(3):
        kube.log_tail(pod("Failed", uid=f"u{i}"))
    assert len(kube.final_logs) == 3 and kube.final_logs.currsize >= 3 * 200


def test_an_apply_forgets_that_it_was_absent(kube):
    assert deployment(kube) is None
    create(kube)
    kube.absent[("Deployment", "ns", "m")] = time.monotonic() - 10  # a read that raced the apply
    create(kube)
    assert ("Deployment", "ns", "m") not in kube.absent

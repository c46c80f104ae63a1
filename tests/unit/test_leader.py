"""Leader election against an in-memory Lease API with the API server's rules (resourceVersion
checks, 404, 409): who leads, when a standby takes over, and when a leader must stop."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import threading
import time

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelship.reconcile import leader
from modelship.reconcile.leader import Election


class Leases:
    """One Lease, as the API server keeps it: replace needs the current resourceVersion."""

    def __init__(self, exists: bool = True):
        self.lease = client.V1Lease(metadata=client.V1ObjectMeta(
            name="op", namespace="ns", resource_version="1", labels={"app.kubernetes.io/managed-by": "Helm"}),
            spec=client.V1LeaseSpec()) if exists else None
        self.hanging = False  # calls block (a partitioned connection) until `released`
        self.released = threading.Event()
        self.fail = False

    def _check(self):
        if self.hanging:
            self.released.wait(30)
        if self.fail:
            raise ApiException(status=503, reason="Service Unavailable")

    def read_namespaced_lease(self, name, namespace, _request_timeout=None):
        self._check()
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.lease)

    def create_namespaced_lease(self, namespace, body, _request_timeout=None):
        self._check()
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        body = copy.deepcopy(body)
        body.metadata.resource_version = "1"
        self.lease = body
        return body

    def replace_namespaced_lease(self, name, namespace, body, _request_timeout=None):
        self._check()
        if body.metadata.resource_version != self.lease.metadata.resource_version:
            raise ApiException(status=409, reason="Conflict")
        body = copy.deepcopy(body)
        body.metadata.resource_version = str(int(body.metadata.resource_version) + 1)
        self.lease = body
        return body


def election(api, identity, **kw) -> Election:
    return Election(api, "ns", "op", identity, **{"lease_seconds": 0.6, "renew_deadline_seconds": 0.4,
                                                  "retry_seconds": 0.1, **kw})


def run(coro):
    return asyncio.run(coro)


def test_one_leads_the_other_waits_and_takes_over_only_after_the_lease():
    api = Leases()
    a, b = election(api, "a"), election(api, "b")

    async def go():
        assert await a.try_acquire_or_renew(1)
        assert not await b.try_acquire_or_renew(1)  # held, just renewed
        started = time.monotonic()
        stop = asyncio.Event()
        assert await b.acquire(stop)  # a renews no more: b waits out the lease as it observed it
        return time.monotonic() - started

    waited = run(go())
    assert 0.5 <= waited < 2, waited
    assert api.lease.spec.holder_identity == "b" and api.lease.spec.lease_transitions == 1
    assert api.lease.metadata.labels == {"app.kubernetes.io/managed-by": "Helm"}  # the chart's labels kept


def test_a_released_lease_is_taken_at_once_and_a_conflict_is_not_leading():
    api = Leases()
    a, b = election(api, "a", lease_seconds=30, renew_deadline_seconds=20), election(api, "b", lease_seconds=30)

    async def go():
        assert await a.acquire(asyncio.Event())
        assert not await b.try_acquire_or_renew(1)
        await a.release()
        assert api.lease.spec.holder_identity is None
        assert await b.try_acquire_or_renew(1)  # no 30 s wait
        stale = copy.deepcopy(api.lease)
        api.lease.metadata.resource_version = "99"  # someone wrote in between
        api.read_namespaced_lease = lambda *a, **k: copy.deepcopy(stale)
        assert not await b.try_acquire_or_renew(1)

    run(go())


def test_a_leader_that_sees_another_holder_has_lost_at_once():
    api = Leases()
    a = election(api, "a", lease_seconds=30, renew_deadline_seconds=20)

    async def go():
        assert await a.acquire(asyncio.Event())
        api.lease.spec.holder_identity = "b"  # taken (a --force upgrade emptied it, b took it)
        api.lease.metadata.resource_version = "50"
        started = time.monotonic()
        why = await a.keep()
        return why, time.monotonic() - started

    why, took = run(go())
    assert "held by b" in why and took < 1


@pytest.mark.parametrize("trouble", ["errors", "hangs"])
def test_a_leader_that_cannot_renew_has_lost_within_the_renew_deadline(trouble):
    api = Leases()
    a = election(api, "a")

    async def go():
        assert await a.acquire(asyncio.Event())
        if trouble == "hangs":
            api.hanging = True
        else:
            api.fail = True
        started = time.monotonic()
        why = await a.keep()
        return why, time.monotonic() - started

    try:
        why, took = run(go())
    finally:
        api.released.set()
    assert "not renewed" in why
    assert took < 0.6, took  # renew deadline 0.4 s + one retry step: before the 0.6 s lease runs out


def test_a_missing_lease_is_created_by_one_replica_owned_by_its_service_account(tmp_path):
    # Argo CD never applies a Lease (a fixed exclusion), so the chart does not ship it.
    claims = {"kubernetes.io": {"namespace": "ns", "serviceaccount": {"name": "op", "uid": "u-1"}}}
    token = tmp_path / "token"
    token.write_text("e30." + base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=") + ".sig")
    api = Leases(exists=False)
    a = election(api, "a", owner=lambda: leader.service_account(token))
    b = election(api, "b", owner=lambda: ("elsewhere", "op", "u-2"))  # another namespace: no owner
    assert run(a.try_acquire_or_renew(1))
    assert api.lease.spec.holder_identity == "a" and api.lease.spec.lease_transitions == 0
    assert [(o.kind, o.name, o.uid) for o in api.lease.metadata.owner_references] == [("ServiceAccount", "op", "u-1")]
    assert not run(b.try_acquire_or_renew(1))  # held and fresh
    api.lease = None  # deleted under a holder b saw a moment ago: b waits out that holder's lease
    assert not run(b.try_acquire_or_renew(1)) and api.lease is None
    time.sleep(0.65)
    assert run(b.try_acquire_or_renew(1)) and api.lease.metadata.owner_references is None
    a.leading = True  # its Lease deleted under a leader: it no longer leads
    api.lease = None
    with pytest.raises(leader.Lost, match="was deleted"):
        run(a.try_acquire_or_renew(1))


def test_two_replicas_finding_no_lease_make_one(monkeypatch):
    api = Leases(exists=False)
    a, b = election(api, "a"), election(api, "b")
    real_read = api.read_namespaced_lease
    monkeypatch.setattr(api, "read_namespaced_lease", lambda *a, **k: (_ for _ in ()).throw(
        ApiException(status=404, reason="Not Found")))  # both read before either creates
    assert run(a.try_acquire_or_renew(1)) and not run(b.try_acquire_or_renew(1))
    monkeypatch.setattr(api, "read_namespaced_lease", real_read)
    assert api.lease.spec.holder_identity == "a"


def test_no_service_account_outside_a_pod(tmp_path):
    assert leader.service_account(tmp_path / "absent") is None
    (tmp_path / "legacy").write_text("not-a-jwt")
    assert leader.service_account(tmp_path / "legacy") is None


def test_the_settings_refuse_timings_that_allow_two_leaders(monkeypatch):
    from modelship.settings import ConfigError, load

    monkeypatch.setenv("POD_NAMESPACE", "ns")
    with pytest.raises(ConfigError, match="retrySeconds < renewDeadlineSeconds < leaseSeconds"):
        load(leader_election={"enabled": True, "lease_seconds": 10, "renew_deadline_seconds": 10})
    assert leader.Election  # (the module imports without a cluster)

"""One active operator among its replicas: leader election on a `coordination.k8s.io` Lease,
with client-go's rules (docs/decisions/0007-leader-election.md says why not Kopf's peering).

- A replica acquires the Lease when nobody holds it, when its holder released it, or when the
  holder's record has not changed for `leaseSeconds` *as this replica observed it* (its own
  monotonic clock, never the holder's timestamps: clocks of two machines disagree).
- The holder renews every `retrySeconds`. When it cannot renew for `renewDeadlineSeconds`
  (shorter than the lease) it stops working at once, before anyone else may take over.
- Every write carries the Lease's resourceVersion: of two replicas that saw it free, one wins.
- A holder that stops cleanly releases the Lease (holder empty, duration 1 s), so that the
  next replica takes over within `retrySeconds` instead of waiting for the lease to run out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("modelship")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Election:
    leases: client.CoordinationV1Api
    namespace: str
    name: str
    identity: str
    lease_seconds: float = 15
    renew_deadline_seconds: float = 10
    retry_seconds: float = 2
    observed: tuple = field(default=(), init=False)  # (holder, renewTime, resourceVersion) last seen
    observed_at: float = field(default=0.0, init=False)  # when it last changed, on this replica's clock
    leading: bool = field(default=False, init=False)

    async def _call(self, fn, *args, **kwargs):
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _spec(self, old: dict, acquiring: bool) -> dict:
        now = _now()
        spec = {**old, "holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_seconds),
                "renewTime": now}
        if acquiring:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + (1 if old else 0)
        return spec

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True while this replica holds the Lease."""
        try:
            lease = await self._call(self.leases.read_namespaced_lease, self.name, self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            body = {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec({}, True)}
            try:
                await self._call(self.leases.create_namespaced_lease, self.namespace, body)
            except ApiException as e2:
                if e2.status == 409:  # another replica created it first
                    return False
                raise
            self.observed, self.observed_at = (), time.monotonic()
            return True
        spec = lease.spec.to_dict() if lease.spec else {}
        holder = spec.get("holder_identity") or ""
        record = (holder, spec.get("renew_time"), lease.metadata.resource_version)
        if record != self.observed:
            self.observed, self.observed_at = record, time.monotonic()
        duration = spec.get("lease_duration_seconds") or self.lease_seconds
        if holder and holder != self.identity and time.monotonic() < self.observed_at + duration:
            return False  # held, and renewed recently as far as this replica can tell
        old = self.leases.api_client.sanitize_for_serialization(lease.spec) if lease.spec else {}
        body = {"metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": lease.metadata.resource_version},
                "spec": self._spec(old, acquiring=holder != self.identity)}
        try:
            await self._call(self.leases.replace_namespaced_lease, self.name, self.namespace, body)
        except ApiException as e:
            if e.status == 409:  # changed since read: someone else renewed or took it
                return False
            raise
        return True

    async def _attempt(self) -> bool:
        try:
            return await self.try_acquire_or_renew()
        except Exception as e:  # the API server unreachable, a 5xx: not leading this round
            log.warning("lease %s/%s: %s", self.namespace, self.name, getattr(e, "reason", None) or e)
            return False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica leads (True), or until `stop` is set (False)."""
        log.info("waiting to lead: lease %s/%s (identity %s)", self.namespace, self.name, self.identity)
        while not stop.is_set():
            if await self._attempt():
                self.leading = True
                log.info("leading: acquired lease %s/%s as %s", self.namespace, self.name, self.identity)
                return True
            try:
                await asyncio.wait_for(stop.wait(), self.retry_seconds)
            except asyncio.TimeoutError:
                pass
        return False

    async def keep(self) -> None:
        """Renew until a renewal has failed for `renew_deadline_seconds`; then return (lost)."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.retry_seconds)
            if await self._attempt():
                last_ok = time.monotonic()
            elif time.monotonic() - last_ok >= self.renew_deadline_seconds:
                self.leading = False
                log.error("lost lease %s/%s: not renewed for %.0f s", self.namespace, self.name,
                          time.monotonic() - last_ok)
                return

    async def release(self) -> None:
        """Give the Lease up (only if still ours), so that a standby replica takes over now."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self._call(self.leases.read_namespaced_lease, self.name, self.namespace)
            if (lease.spec.holder_identity or "") != self.identity:
                return
            body = {"metadata": {"name": self.name, "namespace": self.namespace,
                                 "resourceVersion": lease.metadata.resource_version},
                    "spec": {**self.leases.api_client.sanitize_for_serialization(lease.spec), "holderIdentity": None,
                             "leaseDurationSeconds": 1, "renewTime": _now()}}
            await self._call(self.leases.replace_namespaced_lease, self.name, self.namespace, body)
            log.info("released lease %s/%s", self.namespace, self.name)
        except Exception as e:  # it runs out by itself
            log.warning("lease %s/%s not released (%s); it expires in %.0f s", self.namespace, self.name,
                        getattr(e, "reason", None) or e, self.lease_seconds)

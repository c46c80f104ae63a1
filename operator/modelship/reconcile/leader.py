"""One active operator among its replicas: leader election on a `coordination.k8s.io` Lease,
with client-go's rules (docs/decisions/leader-election.md says why not Kopf's peering).

- A replica acquires the Lease when nobody holds it, when its holder released it, or when the
  holder's record has not changed for `leaseSeconds` *as this replica observed it* (its own
  monotonic clock, never the holder's timestamps: clocks of two machines disagree).
- The holder renews every `retrySeconds`. It has lost the Lease when a renewal has not
  succeeded for `renewDeadlineSeconds` (shorter than the lease; every call is bounded by the
  time left, so a hung connection cannot stretch it), or at once when a read shows another
  holder. Losing it ends the process (run.py), as client-go's callers do: nothing of it goes
  on working once another replica may have taken over.
- Every write carries the Lease's resourceVersion: of two replicas that saw it free, one wins.
- A holder that stops cleanly releases the Lease (holder empty, duration 1 s), so that the
  next replica takes over within `retrySeconds` instead of waiting for the lease to run out.
- A missing Lease is created by the first replica to find it missing (holding it from the
  start; of two that try, the API server lets one create it). The chart does not ship it:
  Argo CD never applies a Lease (`coordination.k8s.io/Lease` is in its fixed exclusions), so a
  chart-made Lease never exists under Argo CD. It is owned by the operator's ServiceAccount,
  named with its uid in the pod's own token, so uninstalling the chart (or pruning it) removes
  it with the account, and no extra read right is needed to find the owner.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ..login import SERVICE_ACCOUNT_TOKEN

log = logging.getLogger("modelship")
TOKEN = Path(SERVICE_ACCOUNT_TOKEN)


def service_account(token: Path = TOKEN) -> tuple[str, str, str] | None:
    """(namespace, name, uid) of the ServiceAccount whose token this pod mounts, from the token's
    own claims (read, not verified: it is this pod's token); None outside a pod or for a legacy
    token."""
    try:
        payload = token.read_text().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["kubernetes.io"]
        return claims["namespace"], claims["serviceaccount"]["name"], claims["serviceaccount"]["uid"]
    except (OSError, IndexError, KeyError, TypeError, ValueError):
        return None


class Lost(Exception):
    """Another replica holds the Lease."""


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
    # Lease calls never wait behind reconciles for a thread of the default pool.
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "lease"), init=False)
    # () -> (namespace, name, uid) of the ServiceAccount that owns a Lease this replica creates
    owner: Callable[[], tuple[str, str, str] | None] = service_account

    async def _call(self, timeout: float, fn, *args):
        """One API call, bounded by `timeout` seconds (on the wire and here)."""
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self.pool, lambda: fn(*args, _request_timeout=max(timeout, 0.1)))
        return await asyncio.wait_for(call, max(timeout, 0.1))

    async def try_acquire_or_renew(self, timeout: float) -> bool:
        """One attempt within `timeout` seconds; True while this replica holds the Lease.
        Raises Lost when it led and a read shows another holder."""
        started = time.monotonic()
        try:
            lease = await self._call(timeout, self.leases.read_namespaced_lease, self.name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return await self._create(timeout - (time.monotonic() - started))
            raise
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        record = (holder, spec.renew_time, lease.metadata.resource_version)
        if record != self.observed:
            self.observed, self.observed_at = record, time.monotonic()
        if holder and holder != self.identity:
            if self.leading:
                raise Lost(f"lease {self.namespace}/{self.name} is held by {holder}")
            if time.monotonic() < self.observed_at + (spec.lease_duration_seconds or self.lease_seconds):
                return False  # held, and renewed recently as far as this replica can tell
        now = dt.datetime.now(dt.timezone.utc)
        if holder != self.identity:
            previous = spec.acquire_time is not None  # someone held it before: a transition
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + (1 if previous else 0)
        spec.holder_identity, spec.lease_duration_seconds, spec.renew_time = \
            self.identity, int(self.lease_seconds), now
        lease.spec = spec
        try:  # the object as read, its labels and annotations kept; its resourceVersion guards the write
            await self._call(timeout - (time.monotonic() - started), self.leases.replace_namespaced_lease,
                             self.name, self.namespace, lease)
        except ApiException as e:
            if e.status == 409:  # changed since read: someone else renewed or took it
                return False
            raise
        return True

    async def _create(self, timeout: float) -> bool:
        """The Lease made, held by this replica; False when another replica made it first."""
        if self.leading:
            raise Lost(f"lease {self.namespace}/{self.name} was deleted")
        held_by, _, _ = self.observed or ("", None, None)
        if held_by and time.monotonic() < self.observed_at + self.lease_seconds:
            # Deleted under a holder seen a moment ago: it may still be working until its next
            # renewal finds the Lease gone; wait out its lease, as for a holder that went silent.
            return False
        now = dt.datetime.now(dt.timezone.utc)
        meta = client.V1ObjectMeta(name=self.name, namespace=self.namespace, labels={
            "app.kubernetes.io/component": "operator", "app.kubernetes.io/managed-by": "modelship"})
        owner = self.owner()
        if owner and owner[0] != self.namespace:
            owner = None  # an owner in another namespace would not resolve: the collector would delete it
        if owner:
            meta.owner_references = [client.V1OwnerReference(api_version="v1", kind="ServiceAccount",
                                                             name=owner[1], uid=owner[2])]
        lease = client.V1Lease(metadata=meta, spec=client.V1LeaseSpec(
            holder_identity=self.identity, lease_duration_seconds=int(self.lease_seconds), acquire_time=now,
            renew_time=now, lease_transitions=0))
        try:
            await self._call(timeout, self.leases.create_namespaced_lease, self.namespace, lease)
        except ApiException as e:
            if e.status == 409:  # another replica made it a moment ago
                return False
            raise
        log.info("created lease %s/%s%s", self.namespace, self.name,
                 f" (owned by ServiceAccount {owner[1]})" if owner else "")
        return True

    async def _attempt(self, timeout: float) -> bool:
        try:
            return await self.try_acquire_or_renew(timeout)
        except Lost:
            raise
        except asyncio.TimeoutError:
            log.warning("lease %s/%s: no answer within %.1f s", self.namespace, self.name, timeout)
        except Exception as e:  # the API server unreachable, a 5xx, a 403: not leading this round
            log.warning("lease %s/%s: %s", self.namespace, self.name, getattr(e, "reason", None) or e)
        return False

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica leads (True), or until `stop` is set (False)."""
        log.info("waiting to lead: lease %s/%s (identity %s)", self.namespace, self.name, self.identity)
        while not stop.is_set():
            if await self._attempt(self.renew_deadline_seconds):
                self.leading = True
                log.info("leading: acquired lease %s/%s as %s", self.namespace, self.name, self.identity)
                return True
            try:
                await asyncio.wait_for(stop.wait(), self.retry_seconds)
            except asyncio.TimeoutError:
                pass
        return False

    async def keep(self) -> str:
        """Renew until the Lease is lost; then return why."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.retry_seconds)
            left = last_ok + self.renew_deadline_seconds - time.monotonic()
            try:
                ok = left > 0 and await self._attempt(left)
            except Lost as e:
                self.leading = False
                return str(e)
            if ok:
                last_ok = time.monotonic()
            elif time.monotonic() - last_ok >= self.renew_deadline_seconds:
                self.leading = False
                return (f"lease {self.namespace}/{self.name} not renewed for "
                        f"{time.monotonic() - last_ok:.0f} s")

    async def release(self) -> None:
        """Give the Lease up (only if still ours), so that a standby replica takes over now."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self._call(self.renew_deadline_seconds, self.leases.read_namespaced_lease, self.name,
                                     self.namespace)
            if (lease.spec.holder_identity or "") != self.identity:
                return
            lease.spec.holder_identity, lease.spec.lease_duration_seconds = None, 1
            lease.spec.renew_time = dt.datetime.now(dt.timezone.utc)
            await self._call(self.renew_deadline_seconds, self.leases.replace_namespaced_lease, self.name,
                             self.namespace, lease)
            log.info("released lease %s/%s", self.namespace, self.name)
        except Exception as e:  # it runs out by itself
            log.warning("lease %s/%s not released (%s); it expires in %.0f s", self.namespace, self.name,
                        getattr(e, "reason", None) or e or type(e).__name__, self.lease_seconds)

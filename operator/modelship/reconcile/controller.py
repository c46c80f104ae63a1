"""The reconcile loop: read, resolve, observe, plan, act, report.

One `reconcile(namespace, name)` serves create, update, resume and every change of a child:
it never branches on what happened, only on what it sees. Decisions live in `plan.py`; API
calls in `kube.py`; this module strings them together and counts what it does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from prometheus_client import Counter, Gauge, Histogram
from pydantic import ValidationError

from .. import api, manifests as builders
from ..manifests import digest
from .kube import Kube, is_transient, now
from kubernetes.client.rest import ApiException

from .plan import Event, Plan, SpecError, choose_engine, plan, set_condition
from .resolve import ResolveError, Resolver
from ..settings import Settings
from .workqueue import WorkQueue

log = logging.getLogger("modelship")

RECONCILES = Counter("modelship_reconciles_total", "Reconciles of ModelDeployments, by result.", ["result"])
RECONCILE_SECONDS = Histogram("modelship_reconcile_duration_seconds", "Time one reconcile took.",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PHASES = Gauge("modelship_modeldeployments", "ModelDeployments by phase.", ["phase"])
CHILD_WRITES = Counter("modelship_child_writes_total", "Children created, updated or deleted.", ["kind", "verb"])
RESOLUTIONS = Counter("modelship_resolutions_total", "Model resolutions, by result reason.", ["reason"])


def source_hash(spec: api.ModelDeploymentSpec) -> str:
    m = spec.model
    return digest([m.repo, m.revision, m.quantization, m.files, m.exclude, spec.engine.type])


class Controller:
    def __init__(self, settings: Settings, kube: Kube, resolver: Resolver):
        self.settings, self.kube, self.resolver = settings, kube, resolver
        # Fault injection for the restart test: exit abruptly after N child writes.
        failpoint = os.environ.get("MODELSHIP_FAILPOINT_EXIT_AFTER_WRITES")
        self.writes_left = int(failpoint) if failpoint else None
        self.queue = WorkQueue(self._handle, workers=4)
        self.phases: dict[tuple[str, str], str] = {}
        self.follow_failures: dict[tuple[str, str], str] = {}  # the last failed Follow re-check
        self.volume_locks: dict[tuple[str, str], asyncio.Lock] = {}  # (namespace, claim) of a shared volume

    def enqueue(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    async def _handle(self, key) -> float | None:
        started = time.monotonic()
        try:
            requeue = await self.reconcile(*key)
        except Exception as e:
            RECONCILES.labels("error").inc()
            if not is_transient(e):
                log.exception("reconcile of %s/%s failed unexpectedly", *key)
            raise
        finally:
            RECONCILE_SECONDS.observe(time.monotonic() - started)
        RECONCILES.labels("requeue" if requeue else "success").inc()
        return requeue

    def _record_phase(self, key: tuple[str, str], phase: str | None) -> None:
        if phase is None:
            self.phases.pop(key, None)
        else:
            self.phases[key] = phase
        for p in api.PHASES:
            PHASES.labels(p).set(sum(1 for v in self.phases.values() if v == p))

    async def reconcile(self, namespace: str, name: str) -> float | None:
        key = (namespace, name)
        body = await asyncio.to_thread(self.kube.get_md, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.queue.forget(key)
            self._record_phase(key, None)
            return None  # the garbage collector removes the children through their owner references
        try:
            md = api.ModelDeployment.model_validate(body)
        except ValidationError as e:  # the CRD admitted it, so this is a newer or older schema
            log.error("ModelDeployment %s/%s does not match this operator's API: %s", namespace, name, e)
            return None
        tried = next((c for c in md.status.conditions if c.type == "Resolved"
                      and c.observed_generation == md.generation), None)
        if (md.status.resolved is None or md.status.resolved.source_hash != source_hash(md.spec)) and tried is None:
            await self._say_resolving(md, body)  # once per generation: a failure is not announced again
        resolution = await self._resolve(md)
        if builders.on_shared_cache(md):
            # One volume, several ModelDeployments: one of them at a time looks at it and acts,
            # so a collection never starts beside a download it did not see (or the reverse).
            async with self.volume_locks.setdefault((namespace, builders.claim_name(md)), asyncio.Lock()):
                return await self._reconcile(key, md, body, resolution)
        return await self._reconcile(key, md, body, resolution)

    async def _reconcile(self, key: tuple[str, str], md: api.ModelDeployment, body: dict,
                         resolution: api.ResolvedModel | ResolveError | SpecError) -> float | None:
        namespace, name = key
        endpoint = md.spec.model.endpoint or self.settings.hub_endpoint
        claim = builders.claim_name(md)
        observed = await asyncio.to_thread(self.kube.observe, md, claim)
        p = plan(md, resolution, observed, self.settings, now(), endpoint)
        if key in self.follow_failures and isinstance(resolution, api.ResolvedModel):
            set_condition(p.status["conditions"], "Resolved", "True", "FollowCheckFailed",
                          f"still serving {resolution.sha[:7]}; asking the Hub whether {resolution.revision} moved "
                          f"failed ({self.follow_failures[key]}); retrying", md.generation, now())
        for action in p.actions:
            try:
                await asyncio.to_thread(self.kube.execute, action, namespace)
            except ApiException as e:
                if is_transient(e) or (action.field_manager and e.status == 422):
                    raise  # (a shared object others are changing too: try again shortly)
                self._rejected(md, p, f"{action.kind} {action.name} was refused by the API server: "
                                      f"{self.kube.refusal(e)}")
                break
            CHILD_WRITES.labels(action.kind, action.verb).inc()
            if self.writes_left is not None:
                self.writes_left -= 1
                if self.writes_left <= 0:
                    log.error("failpoint: exiting abruptly after a child write, mid-reconcile")
                    os._exit(137)
            message = f"{action.past_tense()} {action.kind} {action.name}"
            log.info("%s (for ModelDeployment %s/%s)", message, namespace, name)
            await asyncio.to_thread(self.kube.post_event, md, Event("Normal", action.past_tense(), message))
        old = body.get("status") or {}
        if p.status != old:
            await asyncio.to_thread(self.kube.write_status, namespace, name, p.status)
            if p.status.get("phase") != old.get("phase"):
                log.info("ModelDeployment %s/%s is %s", namespace, name, p.status.get("phase"))
        for event in p.events:
            await asyncio.to_thread(self.kube.post_event, md, event)
        self._record_phase(key, p.status.get("phase"))
        if md.spec.model.revision_policy == "Follow":  # ask the Hub again in a while (sooner after a failure)
            wait = 30.0 if key in self.follow_failures else float(self.settings.follow_interval_seconds)
            return min(p.requeue_after or float("inf"), wait)
        return p.requeue_after

    async def _say_resolving(self, md: api.ModelDeployment, body: dict) -> None:
        """Resolution may take a while (a slow Hub, many files): say so first."""
        status = dict(body.get("status") or {})
        conditions = [c.wire() for c in md.status.conditions]
        endpoint = md.spec.model.endpoint or self.settings.hub_endpoint
        set_condition(conditions, "Resolved", "Unknown", "Resolving",
                      f"asking {endpoint} for {md.spec.model.repo}@{md.spec.model.revision}", md.generation, now())
        status.update(phase="Resolving", conditions=conditions)
        await asyncio.to_thread(self.kube.write_status, md.namespace, md.name, status)
        md.status = api.ModelDeploymentStatus.model_validate(status)

    @staticmethod
    def _rejected(md: api.ModelDeployment, p: Plan, message: str) -> None:
        """A child the operator built was refused (a spec the CRD admits but the API server does
        not, a quota, a StorageClass that cannot grow): report it, do not retry until a change."""
        message += "; fix the ModelDeployment (or the cluster's policy) and the operator tries again"
        set_condition(p.status["conditions"], "Ready", "False", "ApplyRejected", message, md.generation, now())
        p.status["phase"] = "Failed"
        p.requeue_after = None
        before = next((c for c in md.status.conditions if c.type == "Ready"), None)
        if not (before and before.reason == "ApplyRejected" and before.message == message):
            p.events.append(Event("Warning", "ApplyRejected", message))  # once, not at every resync

    def _follow_due(self, have: api.ResolvedModel, key: tuple[str, str] | None = None) -> bool:
        import datetime as dt

        if not have.resolved_at or key in self.follow_failures:
            return True
        at = dt.datetime.strptime(have.resolved_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
        return (dt.datetime.now(dt.timezone.utc) - at).total_seconds() >= self.settings.follow_interval_seconds

    async def _resolve(self, md: api.ModelDeployment) -> api.ResolvedModel | ResolveError | SpecError:
        """The pinned resolution while spec.model is unchanged (with revisionPolicy Follow: until
        followIntervalSeconds have passed); otherwise ask the resolver."""
        want = source_hash(md.spec)
        have = md.status.resolved
        if have is not None and have.source_hash == want:
            if md.spec.model.revision_policy != "Follow" or not self._follow_due(have, (md.namespace, md.name)):
                return have
        token = None
        ref = md.spec.model.token_secret_ref
        if ref is None and self.settings.default_token_secret:
            token = await asyncio.to_thread(self.kube.read_secret_key, md.namespace,
                                            self.settings.default_token_secret, "token")
        if ref:
            token = await asyncio.to_thread(self.kube.read_secret_key, md.namespace, ref.name, ref.key)
            if token is None:
                RESOLUTIONS.labels("SecretNotFound").inc()
                return ResolveError("SecretNotFound",
                                    f"model.tokenSecretRef names Secret {ref.name!r} key {ref.key!r}, which does not "
                                    f"exist in namespace {md.namespace}: create it with `kubectl create secret "
                                    f"generic {ref.name} --from-literal={ref.key}=<your Hugging Face token>`",
                                    transient=True)
        endpoint = md.spec.model.endpoint or self.settings.hub_endpoint
        try:
            resolved = await asyncio.to_thread(self.resolver.resolve, md.spec.model, endpoint, token)
            engine = choose_engine(md.spec.engine.type, resolved.format)
        except (ResolveError, SpecError) as e:
            RESOLUTIONS.labels(e.reason).inc()
            if have is not None and have.source_hash == want:
                # A Follow re-check failed: keep serving the commit we have, say why, try later.
                self.follow_failures[(md.namespace, md.name)] = f"{e.reason}: {e.message}"
                return have
            return e
        self.follow_failures.pop((md.namespace, md.name), None)
        RESOLUTIONS.labels("Resolved").inc()
        moved = have.sha if have is not None and have.source_hash == want and have.sha != resolved.sha else None
        if have is not None and have.source_hash == want and not moved:
            moved = have.moved_from  # still the same commit: keep saying where it came from
        return resolved.model_copy(update={"engine": engine, "source_hash": want, "short_sha": resolved.sha[:7],
                                           "revision": md.spec.model.revision, "resolved_at": now(),
                                           "moved_from": moved})

    async def resync(self, stop: asyncio.Event) -> None:
        """Reconcile everything every `resyncSeconds`: never trust that an event was seen."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.resync_seconds)
                return
            except asyncio.TimeoutError:
                pass
            try:
                for md in await asyncio.to_thread(self.kube.list_mds, self.settings.namespaces):
                    self.enqueue(md["metadata"]["namespace"], md["metadata"]["name"])
            except Exception as e:  # noqa: BLE001 - the next round tries again
                log.warning("resync could not list ModelDeployments: %s", e)

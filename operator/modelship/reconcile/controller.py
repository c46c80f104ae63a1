"""The reconcile loop: read, resolve, observe, plan, act, report.

One `reconcile(namespace, name)` serves create, update, resume and every change of a child:
it never branches on what happened, only on what it sees. It reads with `kube.py` (I/O
only), makes the observed state with `observe.py` (pure), asks `plan.py` (pure) what to do,
executes the actions in the order the plan states, writes the status the plan built, posts
its events, and counts what it does (`metrics.py`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from .. import api, clock, memory
from ..manifests import claim_name, digest, on_shared_cache
from ..manifests.serving import resources
from ..settings import Settings
from . import observe, status
from .autoscaler import Autoscaler, View
from .background import BackgroundApplies
from .facts import unschedulable
from .answers import is_transient, refusal
from .kube import MISS, Kube
from .metrics import ControllerMetrics
from .plan import plan
from .policy import choose_engine, place
from .resolve import Resolver
from .types import Event, JobPods, Observed, Plan, ResolveError, SpecError
from .window import DownloadWindow
from .workqueue import WorkQueue

log = logging.getLogger("modelship")

Key = tuple[str, str]  # (namespace, name)
# Reconciles mostly wait on the API server: 16 at once keep it busy (bench/scale.py: 500
# ModelDeployments took four times as long with 4). Their calls need as many threads (run.py).
WORKERS = 16
Resolution = api.ResolvedModel | ResolveError | SpecError
RESOLVING_GRACE = 1.0  # seconds a resolution may take before the status says `Resolving`
# The log tails read for the progress of running downloads, all of them together, a second at
# most: each is read every 3 s (the plan's pace) while few run, less often when hundreds do.
FOLLOW_READS = 20.0
# A child's news is gathered this long into one reconcile (a ModelDeployment's own change is
# reconciled at once): its Job's and Deployment's pods change state in bursts.
CHILD_NEWS = 0.5


def source_hash(spec: api.ModelDeploymentSpec) -> str:
    m = spec.model
    return digest([m.repo, m.revision, m.quantization, m.files, m.exclude, spec.engine.type])


class Controller:
    def __init__(self, settings: Settings, kube: Kube, resolver: Resolver, metrics: ControllerMetrics):
        self.settings, self.kube, self.resolver, self.metrics = settings, kube, resolver, metrics
        # Fault injection for the restart test: exit abruptly after N child writes.
        failpoint = os.environ.get("MODELSHIP_FAILPOINT_EXIT_AFTER_WRITES")
        self.writes_left = int(failpoint) if failpoint else None
        self.queue = WorkQueue(self._handle, workers=WORKERS)
        self.follow_failures: dict[Key, str] = {}  # the last failed Follow re-check
        self.volume_locks: dict[Key, asyncio.Lock] = {}  # (namespace, claim) of a shared volume
        self.autoscaler = Autoscaler(self.enqueue, settings.autoscaler.interval_seconds)
        self.services = BackgroundApplies(kube, self.queue, self._written)
        self.following: set[Key] = set()  # the ModelDeployments whose running downloads are read
        self.window = DownloadWindow(settings.max_concurrent_downloads, self.enqueue)
        metrics.follow_window(self.window)

    def enqueue(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    def enqueue_soon(self, namespace: str, name: str) -> None:
        """A child of it changed: reconcile within CHILD_NEWS seconds, with the rest of the burst."""
        self.queue.add_soon((namespace, name), CHILD_NEWS)

    def forget(self, key: Key) -> None:
        """What is kept of a ModelDeployment that went (or cannot be read): a Service's apply
        going on for it ends unseen (the garbage collector takes a Service of a gone owner)."""
        self.services.forget(key)
        self.following.discard(key)
        self.window.forget(key)

    async def _handle(self, key: Key) -> float | None:
        started, m = time.monotonic(), self.metrics
        try:
            requeue = await self.reconcile(*key)
        except Exception as e:
            self.window.passed(key)  # (a place in the download window kept for it goes to the next)
            m.reconciles.labels("error").inc()
            if not is_transient(e):
                log.exception("reconcile of %s/%s failed unexpectedly", *key)
            raise
        finally:
            m.reconcile_seconds.observe(time.monotonic() - started)
        m.reconciles.labels("requeue" if requeue else "success").inc()
        return requeue

    async def reconcile(self, namespace: str, name: str) -> float | None:
        key = (namespace, name)
        body = self.kube.get_md(namespace, name, ask=False)  # (the watch cache's copy, at once)
        if body is MISS:
            body = await asyncio.to_thread(self.kube.get_md, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.queue.forget(key)
            self.autoscaler.forget(key)
            self.forget(key)
            self.metrics.record_phase(key, None)
            return None  # the garbage collector removes the children through their owner references
        try:
            md = api.ModelDeployment.model_validate(body)
        except ValidationError as e:  # the CRD admitted it, so this is a newer or older schema
            log.error("ModelDeployment %s/%s does not match this operator's API: %s", namespace, name, e)
            self.forget(key)
            return None
        resolution = await self._resolve_saying(key, md)
        if on_shared_cache(md):
            # One volume, several ModelDeployments: one of them at a time looks at it and acts,
            # so a collection never starts beside a download it did not see (or the reverse).
            async with self.volume_locks.setdefault((namespace, claim_name(md)), asyncio.Lock()):
                return await self._reconcile(key, md, body, resolution)
        return await self._reconcile(key, md, body, resolution)

    async def _reconcile(self, key: Key, md: api.ModelDeployment, body: dict, resolution: Resolution) -> float | None:
        endpoint = md.spec.model.endpoint or self.settings.hub_endpoint
        observed = await self._observe(md)
        follow_failure = self.follow_failures.get(key) if isinstance(resolution, api.ResolvedModel) else None
        scale = self._scale(md, resolution, observed)
        p = plan(md, resolution, observed, self.settings, clock.now(), endpoint, follow_failure, scale, self.window)
        p.events += (scale.events if scale else []) + self.autoscaler.pop_events(key)
        done, changed = await self._execute(md, p)
        self.window.settle(key, p.download_job, p.failed_job)  # (None if its apply was refused: `_execute_lane`)
        old = body.get("status") or {}
        wrote = await self._report(key, md, old, p, done)
        if changed or (wrote and self._unsettled(md, old, p)):
            self.queue.add(key)  # once more, seeing what it wrote (whose watch events are no news: handlers.remember)
        requeue = p.requeue_after
        if requeue is not None and key in self.following:
            requeue = max(requeue, len(self.following) / FOLLOW_READS)
        if md.spec.model.revision_policy == "Follow":  # ask the Hub again when due (sooner after a failure)
            return min(requeue or float("inf"), self._follow_wait(key, resolution))
        return requeue

    def _unsettled(self, md: api.ModelDeployment, old: dict, p: Plan) -> bool:
        """Whether a reconcile that wrote its status (and changed no child) must run once more.
        Not when its plan had nothing to do but the status (the Service's apply aside, which
        reconciles by itself when it ends, or when a newer body was wanted meanwhile): planning
        again on the status it wrote gives that status again and nothing to do
        (tests/unit/test_plan.py checks this of every such plan), the same observations given;
        a new `status.resolved` changes what it observes of its neighbours on the shared cache.
        But when the status write's answer shows a newer spec (or another object), a change
        the user made meanwhile came in with it, and that change's own watch event is then no
        news (`WatchCache.event`): this is the only reconcile that will see it. In a burst of 500
        new models, 1,074 of 3,593 reconciles were runs once more, most with nothing to do; now
        about 530 are (bench/README.md §7, stop 33)."""
        if any(a.kind != "Service" for a in p.actions):
            return True
        if on_shared_cache(md) and p.status.get("resolved") != old.get("resolved"):
            return True  # (what it reads of its neighbours there depends on it: observe.py)
        now = self.kube.get_md(md.namespace, md.name, ask=False)
        return not isinstance(now, dict) or now["metadata"].get("generation") != md.metadata.get("generation") \
            or now["metadata"].get("uid") != md.metadata.get("uid")

    def _scale(self, md: api.ModelDeployment, resolution: Resolution, observed: Observed) -> View | None:
        """Tell the autoscaler what runs (and whether the scheduler finds no room for it); its
        view of the replicas to set, with autoscaling on."""
        pool, uses = None, frozenset()
        if isinstance(resolution, api.ResolvedModel):
            try:
                placement = place(md, resolution.engine, self.settings)
            except SpecError:
                placement = None
            if placement is not None:
                pool = placement.pool
                uses = frozenset(k for kind in resources(md, placement).values() for k in kind)
        pods = sum(1 for p in observed.pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
        self.autoscaler.track(md, pool, uses, pods, unschedulable(observed.pods))
        return self.autoscaler.view(md)

    async def _observe(self, md: api.ModelDeployment) -> Observed:
        """Read the children (and the pods and last log lines of running downloads), then make
        the observed state of them."""
        claim = claim_name(md)
        reads = await asyncio.to_thread(self.kube.read, md, claim)
        follow = observe.downloads_to_follow(md, reads)
        (self.following.add if follow else self.following.discard)((md.namespace, md.name))
        for job in follow:
            pods = await asyncio.to_thread(self.kube.job_pods, md.namespace, job)
            source = observe.progress_pod(pods)
            tail = await asyncio.to_thread(self.kube.log_tail, source) if source else ""
            reads.job_pods[job] = JobPods(pods, tail)
        return observe.observe(md, claim, reads)

    async def _execute(self, md: api.ModelDeployment, p: Plan) -> tuple[list[Event], bool]:
        """The plan's actions, in its order, but the Service's, which goes in the background (it
        depends on nothing and nothing on it: a download never waits for a ClusterIP); the
        Events that announce them (posted after the status: `_report`) and whether any changed
        an object in the watch cache (`Kube.execute`). A child the API server refuses for good
        stops the rest and goes into the status; a transient failure is raised, what was done
        announced."""
        service = next((a for a in p.actions if a.kind == "Service"), None)
        if service is not None:
            self.services.start(md, p, service)
        done: list[Event] = []
        changed: list[bool] = []
        try:
            await self._execute_lane(md, p, [a for a in p.actions if a.kind != "Service"], done, changed)
        except BaseException:
            for event in done:  # what was done is announced all the same
                self.kube.post_event_later(md, event)
            raise  # (a co-owned object others are changing too: try again shortly)
        return done, any(changed)

    async def close(self) -> None:
        """Stop the reconciles, then the Services' applies going on in the background."""
        self.services.closing = True
        await self.queue.close()
        await self.services.close()

    async def _execute_lane(self, md: api.ModelDeployment, p: Plan, actions: list, done: list[Event],
                            changed: list[bool]) -> None:
        for action in actions:
            try:
                changed.append(await asyncio.to_thread(self.kube.execute, action, md.namespace))
            except ApiException as e:
                if is_transient(e) or (action.field_manager and e.status == 422):
                    raise
                status.rejected(md, p, f"{action.kind} {action.name} was refused by the API server: {refusal(e)}",
                                clock.now())
                if action.kind == "Job" and action.name == p.download_job:
                    p.download_job = None  # not in flight: its place in the download window is free
                return
            done.append(self._written(md, action))

    def _written(self, md: api.ModelDeployment, action) -> Event:
        """A child write done, in the reconcile or in the background: counted, logged, and the
        Event that announces it (the fail point may end the process here)."""
        self.metrics.child_writes.labels(action.kind, action.verb).inc()
        self._failpoint()
        message = f"{action.past_tense()} {action.kind} {action.name}"
        log.info("%s (for ModelDeployment %s/%s)", message, md.namespace, md.name)
        return Event("Normal", action.past_tense(), message)

    def _failpoint(self) -> None:
        if self.writes_left is not None:
            self.writes_left -= 1
            if self.writes_left <= 0:
                log.error("failpoint: exiting abruptly after a child write, mid-reconcile")
                os._exit(137)

    async def _report(self, key: Key, md: api.ModelDeployment, old: dict, p: Plan, done: list[Event]) -> bool:
        """Write the status (when it changed: whether the cache's copy did), then post the Events of what was
        done and the plan's, in the background and in order (best effort: a change waits for
        none of them)."""
        wrote = False
        if p.status != old:
            wrote = await asyncio.to_thread(self.kube.write_status, md.namespace, md.name, p.status)
            if p.status.get("phase") != old.get("phase"):
                log.info("ModelDeployment %s/%s is %s", md.namespace, md.name, p.status.get("phase"))
        self.metrics.record_phase(key, p.status.get("phase"))
        for event in done + p.events:
            self.kube.post_event_later(md, event)
        return wrote

    async def _resolve_saying(self, key: Key, md: api.ModelDeployment) -> Resolution:
        """`_resolve`, saying `Resolving` in the status first when the answer does not come
        within RESOLVING_GRACE seconds (a slow Hub, many files), once per generation (a failure
        is not announced again). An answer at once (the pinned resolution, the catalog, a warm
        Hub cache) costs no status write, nor the reconcile its echo would start."""
        tried = any(c.type == "Resolved" and c.observed_generation == md.generation for c in md.status.conditions)
        if (md.status.resolved is not None and md.status.resolved.source_hash == source_hash(md.spec)) or tried:
            return await self._resolve(md)
        task = asyncio.ensure_future(self._resolve(md))
        done, _ = await asyncio.wait({task}, timeout=RESOLVING_GRACE)
        if not done:
            try:
                await self._say_resolving(key, md)
            except BaseException:
                task.cancel()
                raise
        return await task

    async def _say_resolving(self, key: Key, md: api.ModelDeployment) -> None:
        """Resolution may take a while (a slow Hub, many files): say so first."""
        endpoint = md.spec.model.endpoint or self.settings.hub_endpoint
        new = status.resolving(md, endpoint, clock.now())
        await asyncio.to_thread(self.kube.write_status, md.namespace, md.name, new)
        self.metrics.record_phase(key, new["phase"])
        md.status = api.ModelDeploymentStatus.model_validate(new)

    def _follow_wait(self, key: Key, resolution: Resolution) -> float:
        """Seconds until the Hub is to be asked again: from when it last was (a reconcile
        supersedes the last one's requeue, so each says when the check is due, not a whole
        interval from now), 30 s after a failure."""
        interval = float(self.settings.follow_interval_seconds)
        if key in self.follow_failures:
            return 30.0
        if isinstance(resolution, api.ResolvedModel) and resolution.resolved_at:
            return min(interval, max(1.0, interval - clock.seconds_since(resolution.resolved_at)))
        return interval

    def _follow_due(self, have: api.ResolvedModel, key: Key) -> bool:
        if not have.resolved_at or key in self.follow_failures:
            return True
        return clock.seconds_since(have.resolved_at) >= self.settings.follow_interval_seconds

    async def _token(self, md: api.ModelDeployment) -> str | None:
        """The Hugging Face token: spec.model.tokenSecretRef's, else the operator's default
        Secret's where the namespace has it. ResolveError when the named Secret is missing."""
        ref = md.spec.model.token_secret_ref
        if ref is None:
            if not self.settings.default_token_secret:
                return None
            return await asyncio.to_thread(self.kube.read_secret_key, md.namespace,
                                           self.settings.default_token_secret, "token")
        token = await asyncio.to_thread(self.kube.read_secret_key, md.namespace, ref.name, ref.key)
        if token is None:
            raise ResolveError("SecretNotFound",
                               f"model.tokenSecretRef names Secret {ref.name!r} key {ref.key!r}, which does not "
                               f"exist in namespace {md.namespace}: create it with `kubectl create secret "
                               f"generic {ref.name} --from-literal={ref.key}=<your Hugging Face token>`",
                               transient=True)
        return token

    async def _resolve(self, md: api.ModelDeployment) -> Resolution:
        """The pinned resolution while spec.model is unchanged (with revisionPolicy Follow: until
        followIntervalSeconds have passed); otherwise ask the resolver."""
        key, want, have = (md.namespace, md.name), source_hash(md.spec), md.status.resolved
        pinned = have if have is not None and have.source_hash == want else None
        if pinned and (md.spec.model.revision_policy != "Follow" or not self._follow_due(pinned, key)):
            return pinned
        try:
            token = await self._token(md)
        except ResolveError as e:
            self.metrics.resolutions.labels(e.reason).inc()
            return e
        endpoint = md.spec.model.endpoint or self.settings.hub_endpoint
        try:
            resolved = await asyncio.to_thread(self.resolver.resolve, md.spec.model, endpoint, token)
            engine = choose_engine(md.spec.engine.type, resolved.format, self.settings.default_engine,
                                   pinned.engine if pinned else None)
        except (ResolveError, SpecError) as e:
            self.metrics.resolutions.labels(e.reason).inc()
            if pinned:  # a Follow re-check failed: keep serving the commit we have, say why, try later
                self.follow_failures[key] = f"{e.reason}: {e.message}"
                return pinned
            return e
        self.follow_failures.pop(key, None)
        self.metrics.resolutions.labels("Resolved").inc()
        moved = pinned.sha if pinned and pinned.sha != resolved.sha else None
        if pinned and not moved:
            moved = pinned.moved_from  # still the same commit: keep saying where it came from
        return resolved.model_copy(update={"engine": engine, "source_hash": want, "short_sha": resolved.sha[:7],
                                           "revision": md.spec.model.revision, "resolved_at": clock.now(),
                                           "moved_from": moved})

    async def resync(self, stop: asyncio.Event) -> None:
        """Reconcile everything every `resyncSeconds`: never trust that an event was seen. Each
        round (the first at once) lists the ModelDeployments, and with the watch cache every
        kind it holds, which primes it and drops what a watch missed (`cache.py`)."""
        while not stop.is_set():
            try:
                known = self.window.known()  # (one made while the listing runs is not in it, and stays)
                listed = await asyncio.to_thread(self.kube.list_mds, self.settings.namespaces)
                for namespace, name in listed:
                    self.enqueue(namespace, name)
                self.window.keep_only(set(listed), known)  # (a deletion the watch missed frees its places)
            except Exception as e:  # noqa: BLE001 - the next round tries again
                log.warning("resync could not list ModelDeployments: %s", e)
            memory.trim()  # the round's listings were parsed and dropped: give their pages back
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.resync_seconds)
                return
            except asyncio.TimeoutError:
                pass

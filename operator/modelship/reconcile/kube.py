"""The one thin layer that talks to the API server for the reconcile loop: it reads (gets,
lists, log tails) and writes what it is told to; it decides nothing.

Children are written with server-side apply (field manager from the settings, conflicts
forced: the operator owns what it declares), deleted tolerating 404, and Events are posted
on the ModelDeployment. The `kubernetes` client is synchronous; callers run these methods in
a thread.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import urllib3
from cachetools import LRUCache, TTLCache
from kubernetes import client
from kubernetes.client.rest import ApiException

from .. import api, clock
from ..endpointslices import ready_urls
from ..manifests import (CLAIM_LABEL, COMPONENT, DEPLOYMENT_LABEL, MANAGED_BY, SHARED_CACHE, SHARED_CLAIM, claim_label,
                         on_shared_cache)
from .answers import answer
from .cache import MD_KIND, WatchCache
from .event_queue import THREADS as EVENT_THREADS, EventQueue
from .in_flight import InFlight
from .types import Action, Event, Reads

log = logging.getLogger("modelship")

APPLY = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"

# A 404 for a Deployment (the watch cache holds only the operator's) or a Service (before its
# first listing of them) is believed for ABSENT_FOR seconds, not asked at every reconcile of a
# download (a model's Deployment comes once its weights are in). An apply that creates one asks
# again first, unless the 404 is younger than FRESH_FOR seconds.
ABSENT_KINDS = ("Deployment", "Service")
ABSENT_FOR, FRESH_FOR = 120.0, 2.0
LIST_PAGE = 250  # objects per page of the resync's listings
# Each child kind's API (a Kube attribute) and the plural its list calls are named by.
LISTS = {"Job": ("batch", "job"), "Pod": ("core", "pod"), "Service": ("core", "service"),
         "Deployment": ("apps", "deployment"), "PersistentVolumeClaim": ("core", "persistent_volume_claim")}
FINAL_LOGS_BYTES = 4 << 20  # the log tails of finished pods kept (they do not change), in all
# A read with `ask=False` that the watch cache (or the 404 memo) cannot answer: it needs the API server.
MISS = object()


class Kube:
    def __init__(self, api_client: client.ApiClient, field_manager: str, cache: WatchCache | None = None,
                 in_flight: int = 0):
        self.client = api_client
        self.in_flight = InFlight(api_client, in_flight)  # (in_flight.py: the limit, and what is outside it)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.field_manager = field_manager
        self.cache = cache  # the watch cache the reads answer from where it holds the answer (cache.py)
        # For the reads of one reconcile at once (the controller runs 4 at a time).
        self.readers = ThreadPoolExecutor(max_workers=16, thread_name_prefix="kube-read")
        # A few threads; one ModelDeployment's Events in order; bounded.
        self.events = EventQueue(self.post_event, threads=EVENT_THREADS, key=lambda md, _: (md.namespace, md.name))
        self.memo_lock = threading.Lock()  # (the readers are threads)
        self.absent: TTLCache = TTLCache(maxsize=8192, ttl=ABSENT_FOR)  # (kind, ns, name) -> when it was 404
        # pod uid -> its tail ("" when it could not be had), each counted with its bookkeeping
        self.final_logs: LRUCache = LRUCache(maxsize=FINAL_LOGS_BYTES, getsizeof=lambda tail: len(tail) + 200)

    def _plain(self, obj) -> dict:
        """An object of the client library as the API server sent it (camelCase dicts)."""
        return self.client.sanitize_for_serialization(obj)

    # --- the ModelDeployment ---------------------------------------------------------------

    def get_md(self, namespace: str, name: str, ask: bool = True) -> dict | None:
        _, cached = self._cached(MD_KIND, namespace, name)
        if cached is not None:  # (absent: asked all the same, a reconcile of a deleted one is rare)
            return cached
        if not ask:
            return MISS
        try:
            return self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_mds(self, namespaces: list[str]) -> list[tuple[str, str]]:
        """The (namespace, name) of every ModelDeployment of these namespaces (none: of the
        cluster); with the watch cache, every kind it holds is listed too and replaces what it
        holds (`cache.py`), page by page: a listing of thousands of pods is never all in memory."""
        mds: list[tuple[str, str]] = []
        for kind in self.cache.objects if self.cache is not None else (MD_KIND,):
            for ns in namespaces or [None]:
                mine = self.cache is None or kind in self.cache.whole
                present, version, token = set(), None, None
                while True:
                    page = self._list_raw(kind, ns, None if mine else f"{MANAGED_BY}=modelship", token)
                    items, meta = page.get("items") or [], page.get("metadata") or {}
                    version = version or meta.get("resourceVersion")
                    for obj in items:
                        key = (obj["metadata"].get("namespace"), obj["metadata"]["name"])
                        present.add(key)
                        mds += [key] if kind == MD_KIND else []
                        if self.cache is not None:
                            self.cache.put(kind, obj)
                    del page, items
                    token = meta.get("continue")
                    if not token:
                        break
                if self.cache is not None:
                    self.cache.prune(kind, ns, present, version)
        return mds

    def _list_raw(self, kind: str, namespace: str | None, selector: str | None, token: str | None) -> dict:
        """One page of a listing as the API server sent it (plain JSON: as the watch events come)."""
        kw = {"label_selector": selector, "limit": LIST_PAGE, "_continue": token, "_preload_content": False}
        if kind == MD_KIND:
            args = (api.GROUP, api.VERSION) + ((namespace,) if namespace else ()) + (api.PLURAL,)
            fn = self.custom.list_namespaced_custom_object if namespace else self.custom.list_cluster_custom_object
            return orjson.loads(fn(*args, **kw).data)
        group, plural = getattr(self, LISTS[kind][0]), LISTS[kind][1]
        if namespace is None:
            resp = getattr(group, f"list_{plural}_for_all_namespaces")(**kw)
        else:
            resp = getattr(group, f"list_namespaced_{plural}")(namespace, **kw)
        return orjson.loads(resp.data)

    def write_status(self, namespace: str, name: str, status: dict) -> bool:
        """Replace the whole status (a merge patch would keep nested fields that went away);
        whether that changed the watch cache's copy (`_wrote`)."""
        written = self.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, [{"op": "add", "path": "/status", "value": status}],
            _content_type=JSON_PATCH)
        return self.cache is not None and isinstance(written, dict) and self.cache.put(MD_KIND, written, ours=True)

    def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        """The value, or None if the Secret or its key is missing."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        raw = (secret.data or {}).get(key)
        return base64.b64decode(raw).decode().strip() if raw else None

    def router_urls(self, namespace: str, service: str) -> list[str]:
        """The base URLs of a Service's ready endpoints (the router replicas), from its
        EndpointSlices."""
        slices = client.DiscoveryV1Api(self.client).list_namespaced_endpoint_slice(
            namespace, label_selector=f"kubernetes.io/service-name={service}", _preload_content=False)
        return ready_urls(json.loads(slices.data).get("items") or [])

    # --- reading the children --------------------------------------------------------------

    def _get(self, kind: str, fn, name: str, namespace: str, ask: bool = True) -> dict | None:
        known, cached = self._cached(kind, namespace, name)
        if known:
            return cached
        key = (kind, namespace, name)
        with self.memo_lock:
            if key in self.absent:
                return None
        if not ask:
            return MISS
        try:
            return self._plain(fn(name, namespace))
        except ApiException as e:
            if e.status != 404:
                raise
            if kind in ABSENT_KINDS:
                with self.memo_lock:
                    self.absent[key] = time.monotonic()
            return None

    def _confirm_absent(self, kind: str, namespace: str, name: str) -> None:
        """Before an apply that creates a child: a name last seen absent a while ago (the 404
        memo) is asked for again; one the watch cache holds now (its event came since the read: a kind
        held whole has no memo) is looked at there. Something found (made meanwhile by someone else)
        is not taken over: a conflict (transient), and the next reconcile reads it and says so."""
        with self.memo_lock:
            since = self.absent.pop((kind, namespace, name), None)
        there = self._cached(kind, namespace, name)[1]
        if there is not None and (there["metadata"].get("labels") or {}).get(DEPLOYMENT_LABEL) == name:
            return  # one of ours (an earlier apply's answer): applied again
        if there is None:
            if since is None or time.monotonic() - since < FRESH_FOR:
                return
            try:
                self._named(kind)(name, namespace)
            except ApiException as e:
                if e.status == 404:
                    return
                raise
        raise ApiException(status=409, reason=f"{kind} {name} was made by someone else since it was read")

    def _cached(self, kind: str, namespace: str, name: str) -> tuple[bool, dict | None]:
        """(whether the watch cache knows, its copy of the object). Of most kinds it holds only
        what the operator labels: absent there is not absent, so the API server is asked."""
        if self.cache is None or not self.cache.synced(kind, namespace):
            return False, None
        obj = self.cache.get(kind, namespace, name)
        return obj is not None or kind in self.cache.whole, obj

    def _named(self, kind: str):
        """Read by name with a field selector: claims, Services (no `get` granted), a Deployment before a create."""
        live = getattr(getattr(self, LISTS[kind][0]), f"list_namespaced_{LISTS[kind][1]}")
        def read(name: str, namespace: str) -> dict:
            found = live(namespace, field_selector=f"metadata.name={name}", _preload_content=False)
            items = orjson.loads(answer(found))["items"]
            if not items:
                raise ApiException(status=404, reason="Not Found")
            return items[0]
        return read

    def _list(self, kind: str, namespace: str, selector: str, live, ask: bool = True) -> list[dict]:
        """Objects by label selector: from the watch cache once it listed the kind."""
        if self.cache is not None and self.cache.synced(kind, namespace):
            return self.cache.list(kind, namespace, selector)
        if not ask:
            return MISS
        return [self._plain(o) for o in live(namespace, label_selector=selector).items]

    def _list_any(self, kind: str, namespace: str, selectors: list[str], live, ask: bool = True) -> list[dict]:
        """Objects that match any of the selectors, each once."""
        found: dict[str, dict] = {}
        for selector in selectors:
            got = self._list(kind, namespace, selector, live, ask)
            if got is MISS:
                return MISS
            for o in got:
                found.setdefault(o["metadata"]["name"], o)
        return list(found.values())

    def read(self, md: api.ModelDeployment, claim: str) -> Reads:
        """Everything that may be a child of `md` or share its volume (the log tails of running
        downloads aside: `read_job_pods`), from the watch cache where it holds them. The reads
        that go to the API server are independent and go at once: one round trip instead of
        five, which is most of what a change waits for. What the watch cache answers is read
        here, in the caller's thread: a hand-over to a reader costs more than the read."""
        ns, own = md.namespace, f"{DEPLOYMENT_LABEL}={md.name}"
        cache = on_shared_cache(md)
        # On a shared volume, every Job on it; on a claim of the user's also its own Jobs from
        # before they were shared (an older operator's: stale, to delete).
        jobs = [f"{SHARED_CACHE}={SHARED_CLAIM}"] if cache else [f"{own},{COMPONENT} in (download,collect)"]
        if md.spec.storage.existing_claim:
            jobs.insert(0, f"{CLAIM_LABEL}={claim_label(md.spec.storage.existing_claim)}")
        # On the shared cache every serving pod of the namespace may mount the volume.
        pods = f"{MANAGED_BY}=modelship,{COMPONENT}=server" if cache else f"{own},{COMPONENT}=server"
        calls = {
            "jobs": lambda ask=True: self._list_any("Job", ns, jobs, self.batch.list_namespaced_job, ask),
            "server_pods": lambda ask=True: self._list("Pod", ns, pods, self.core.list_namespaced_pod, ask),
            "neighbours": lambda ask=True: (self._neighbours(ns, ask) if cache else []),
            "pvc": lambda ask=True: self._get("PersistentVolumeClaim", self._named("PersistentVolumeClaim"), claim, ns,
                                              ask),
            "deployment": lambda ask=True: self._get("Deployment", self.apps.read_namespaced_deployment, md.name, ns,
                                                     ask),
            "service": lambda ask=True: self._get("Service", self._named("Service"), md.name, ns, ask),
        }
        got = {k: fn(ask=False) for k, fn in calls.items()}
        futures = {k: self.readers.submit(calls[k]) for k, v in got.items() if v is MISS}
        got.update({k: f.result() for k, f in futures.items()})
        return Reads(**got)

    def _neighbours(self, ns: str, ask: bool = True) -> list[dict]:
        if self.cache is not None and self.cache.synced(MD_KIND, ns):
            return self.cache.list(MD_KIND, ns)
        if not ask:
            return MISS
        return self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL)["items"]

    def job_pods(self, namespace: str, job: str) -> list[dict]:
        """A Job's pods, oldest first (the operator labels them: from the watch cache)."""
        pods = self._list("Pod", namespace, f"{MANAGED_BY}=modelship,batch.kubernetes.io/job-name={job}",
                          self.core.list_namespaced_pod)
        return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")

    def log_tail(self, pod: dict, lines: int = 200) -> str:
        """The last lines a pod logged ("" when they cannot be had); those of a pod that
        finished are asked for once, whatever the answer (a Job is marked complete some time
        after its pod ended; a node whose kubelet cannot be reached stays so; a failed pod's
        error is in its status, `observe.last_failure`)."""
        meta = pod["metadata"]
        uid = meta.get("uid") if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None
        with self.memo_lock:
            if uid in self.final_logs:
                return self.final_logs[uid]
        try:
            tail = self.in_flight.ungated(self.core.read_namespaced_pod_log, meta["name"], meta["namespace"],
                                          tail_lines=lines, _preload_content=False).data.decode(errors="replace")
        except urllib3.exceptions.HTTPError:  # (timed out: ask again next time)
            return ""
        except ApiException as e:
            if e.status in (0, 429):  # the API server away or busy: ask again next time
                return ""
            tail = ""  # (a node without a reachable kubelet: 500 at every try)
        if uid and len(tail) <= FINAL_LOGS_BYTES // 64:
            with self.memo_lock:
                self.final_logs[uid] = tail
        return tail

    # --- writing ---------------------------------------------------------------------------

    def execute(self, action: Action, namespace: str) -> bool:
        """Do the action; whether it changed the watch cache's copy of the object (`_wrote`: a
        delete's watch event is news, the controller is told of it that way)."""
        kind, name = action.kind, action.name
        if action.verb == "annotate":  # a merge patch: one key per snapshot, so writers never collide
            assert kind == "PersistentVolumeClaim"
            return self._wrote(kind, self.core.patch_namespaced_persistent_volume_claim(
                name, namespace, {"metadata": {"annotations": action.body}}, field_manager=self.field_manager,
                _content_type=MERGE_PATCH, _preload_content=False))
        if action.verb == "apply":
            if kind in ABSENT_KINDS and not action.exists:
                self._confirm_absent(kind, namespace, name)
            fn = {"PersistentVolumeClaim": self.core.patch_namespaced_persistent_volume_claim,
                  "Service": self.core.patch_namespaced_service,
                  "Job": self.batch.patch_namespaced_job,
                  "Deployment": self.apps.patch_namespaced_deployment}[kind]
            changed = self._wrote(kind, fn(name, namespace, action.body, force=True, _content_type=APPLY,
                                           field_manager=action.field_manager or self.field_manager,
                                           _preload_content=False))
            with self.memo_lock:  # (a read that raced the apply may have found it absent)
                self.absent.pop((kind, namespace, name), None)
            return changed
        # Only Jobs are ever deleted (a superseded or failed download, a finished collection);
        # the rest goes with the ModelDeployment, by the garbage collector. The chart grants no more.
        assert kind == "Job", f"the operator deletes only Jobs, not a {kind}"
        uid = (action.body or {}).get("uid")  # the very Job that was read, not one made since under its name
        options = client.V1DeleteOptions(propagation_policy="Background",
                                         preconditions=client.V1Preconditions(uid=uid) if uid else None)
        try:
            self.batch.delete_namespaced_job(name, namespace, body=options)
        except ApiException as e:
            if e.status == 409:  # another Job has its name now (the uid precondition): it stays
                return False
            if e.status != 404:
                raise
        if self.cache is not None:
            self.cache.remove(kind, namespace, name)
        return False

    def _wrote(self, kind: str, response) -> bool:
        """Read-your-writes: the object the API server answered a write with goes in the watch
        cache at once, not when its watch event comes (its JSON as sent: the client library's
        models would cost a round of conversions each way); whether that changed the cache's
        copy (a write that changed nothing keeps the object's version: no news, no echo)."""
        return self.cache is not None and self.cache.put(kind, orjson.loads(response.data), ours=True)

    def post_event_later(self, md: api.ModelDeployment, event: Event) -> None:
        """`post_event` in the background, after those posted before it (the oldest waiting
        dropped past event_queue.LIMIT)."""
        self.events.submit(md, event)

    def post_event(self, md: api.ModelDeployment, event: Event) -> None:
        """An Event on the ModelDeployment; failing to post one never fails a reconcile."""
        at = clock.now()
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{md.name}.{uuid.uuid4().hex[:12]}", "namespace": md.namespace},
            "involvedObject": {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": md.name,
                               "namespace": md.namespace, "uid": md.metadata.get("uid"),
                               "resourceVersion": md.metadata.get("resourceVersion")},
            "reason": event.reason, "message": event.message[:1024], "type": event.type,
            "source": {"component": "modelship-operator"}, "reportingComponent": "modelship.io/operator",
            "reportingInstance": os.environ.get("HOSTNAME", "modelship-operator"),
            "firstTimestamp": at, "lastTimestamp": at, "count": 1,
        }
        try:
            answer(self.core.create_namespaced_event(md.namespace, body, _preload_content=False))
        except Exception as e:  # noqa: BLE001 - events are best effort
            log.warning("could not post event %s on %s/%s: %s", event.reason, md.namespace, md.name, e)

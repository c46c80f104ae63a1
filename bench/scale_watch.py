"""What `scale.py` reads of the cluster while it waits: one watch of each kind it counts (the
ModelDeployments, their Deployments and Services, in the bench's namespace), each kept as a
summary by name in a thread of its own.

It replaces listing all three every second: at 500 of each, one round of those listings
cost the API server some 100-115 ms of CPU and the bench 125-145 ms (`scale_listings.py`), 45-50
rounds in a run, on the cores the operator and the cluster it measures share (bench/README.md
§7, "Stop 36"). A watch sends each change once.

A watch that ends (the API server's `timeoutSeconds`, a dropped connection) starts again from
the last version it saw; one whose version is gone (410), or that the API server ends with
any other error, lists again, and the listing replaces what it held.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import Callable

import orjson
from kubernetes import client

GROUP, VERSION, PLURAL = "modelship.io", "v1alpha1", "modeldeployments"
WATCH_SECONDS = 60  # each watch request's own end (the API server's `timeoutSeconds`)
POLL = 0.25  # how often the benches look at what is watched (seconds)
TIMEOUT = (10, 60)  # seconds: to connect, and between two reads of a listing


def _md(obj: dict) -> tuple:
    st = obj.get("status") or {}
    return obj["metadata"].get("generation"), st.get("observedGeneration"), st.get("phase")


def _deployment(obj: dict) -> tuple:
    available = any(c.get("type") == "Available" and c.get("status") == "True"
                    for c in (obj.get("status") or {}).get("conditions") or [])
    return obj["spec"].get("replicas"), available


def _service(obj: dict) -> bool:
    return True


class Watched:
    """One kind in one namespace: `summary(obj)` of each object, by name."""

    def __init__(self, list_fn: Callable, namespace: str, summary: Callable[[dict], object]):
        self.list_fn, self.namespace, self.summary = list_fn, namespace, summary
        self.items: dict[str, object] = {}
        self.lock, self.stopping = threading.Lock(), threading.Event()
        self.answer = None  # the watch going on (closed by `stop`)
        self.said = False  # a failure printed already (the first only)
        self.version = self._list()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _list(self) -> str:
        body = orjson.loads(self.list_fn(self.namespace, _preload_content=False,
                                         _request_timeout=TIMEOUT).data)
        with self.lock:
            self.items = {o["metadata"]["name"]: self.summary(o) for o in body["items"]}
        return body["metadata"]["resourceVersion"]

    def _run(self) -> None:
        relist = False
        while not self.stopping.is_set():
            try:
                if relist:  # (its version gone, or the watch ended by an error)
                    time.sleep(0.5)
                    self.version, relist = self._list(), False
                relist = not self._watch()
            except Exception as e:  # noqa: BLE001 - a dropped connection, or the API server's refusal
                if self.stopping.is_set():
                    return
                if not self.said:
                    print(f"  (the bench's watch of {self.namespace} failed, and watches again: {e!r:.300})",
                          file=sys.stderr, flush=True)
                    self.said = True
                relist = isinstance(e, client.ApiException) and e.status == 410
                time.sleep(0.5)

    def _watch(self) -> bool:
        """One watch request, to its end; False if an error event ended it."""
        self.answer = answer = self.list_fn(
            self.namespace, watch=True, resource_version=self.version, allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS, _preload_content=False, _request_timeout=(TIMEOUT[0], WATCH_SECONDS + 30))
        try:
            for line in answer:
                if self.stopping.is_set():
                    return True
                if not line.strip():
                    continue
                event = orjson.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":  # (410: too old a version; anything else: start afresh too)
                    return False
                if kind != "BOOKMARK":
                    name = obj["metadata"]["name"]
                    with self.lock:
                        if kind == "DELETED":
                            self.items.pop(name, None)
                        else:
                            self.items[name] = self.summary(obj)
                self.version = obj["metadata"]["resourceVersion"]
            return True
        finally:
            answer.close()  # (a watch cut short must not go back to the pool)
            answer.release_conn()

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            return dict(self.items)

    def stop(self) -> None:
        self.stopping.set()
        answer = self.answer
        if answer is not None:
            try:
                answer.shutdown()  # (unblocks the read going on: urllib3 2.3+)
            except Exception:  # noqa: BLE001 - it ends within WATCH_SECONDS anyway
                pass


def deployments(api: client.ApiClient, namespace: str) -> Watched:
    """The Deployments of `namespace`: (spec.replicas, whether `Available`) by name."""
    return Watched(client.AppsV1Api(api).list_namespaced_deployment, namespace, _deployment)


def available(watched: Watched) -> int:
    """How many of `deployments(...)` say `Available`."""
    return sum(1 for _, ok in watched.snapshot().values() if ok)


def started(makers: list[Callable[[], Watched]]) -> list[Watched]:
    """Each watch started in turn; when one cannot start (its listing refused), those started
    already are stopped before the failure goes on: no watch is left running behind it."""
    out: list[Watched] = []
    try:
        for make in makers:
            out.append(make())
    except BaseException:
        for w in out:
            w.stop()
        raise
    return out


class Progress:
    """The ModelDeployments, Deployments and Services of `namespace`, watched."""

    def __init__(self, api: client.ApiClient, namespace: str):
        custom = client.CustomObjectsApi(api)

        def models(namespace: str, **kw):
            return custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, **kw)

        self.models, self.deployments, self.services = started([
            lambda: Watched(models, namespace, _md),
            lambda: deployments(api, namespace),
            lambda: Watched(client.CoreV1Api(api).list_namespaced_service, namespace, _service)])

    def counts(self) -> tuple[int, int, Counter]:
        """(reconciled, Ready) ModelDeployments, as scale.py's docstring defines them, and what
        the others lack (a current status, their Deployment of 2 replicas, their Service)."""
        deps = {n for n, (replicas, _) in self.deployments.snapshot().items() if replicas == 2}
        svcs = self.services.snapshot()
        done = ready = 0
        lacking: Counter = Counter()
        for name, (generation, observed, phase) in self.models.snapshot().items():
            lacks = [what for what, has in (("status", observed == generation), ("Deployment", name in deps),
                                            ("Service", name in svcs)) if not has]
            lacking.update(lacks)
            if not lacks:
                done += 1
                ready += phase == "Ready"
        return done, ready, lacking

    def stop(self) -> None:
        for w in (self.models, self.deployments, self.services):
            w.stop()

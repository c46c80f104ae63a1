"""The local node's view of the API: informers (list, then watch, in a thread) and async calls.

The official `kubernetes` client is synchronous; its calls run in worker threads so the
agent's event loop (processes, probes, status) never blocks on the API server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any, Callable

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)


def api_client(kubeconfig: str) -> client.ApiClient:
    return config.new_client_from_config(config_file=kubeconfig)


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


def is_status(e: BaseException, *codes: int) -> bool:
    return isinstance(e, ApiException) and e.status in codes


class Informer:
    """Keeps a dict of objects (as plain dicts, by uid) current, and calls `on_change(obj, deleted)`
    on the event loop for every change. Relists on watch expiry, so no change is lost."""

    def __init__(self, name: str, list_fn: Callable[..., Any], loop: asyncio.AbstractEventLoop,
                 on_change: Callable[[dict, bool], None], **list_kwargs: Any):
        self.name = name
        self.list_fn = list_fn
        self.list_kwargs = list_kwargs
        self.loop = loop
        self.on_change = on_change
        self.objects: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _emit(self, obj: dict, deleted: bool) -> None:
        self.loop.call_soon_threadsafe(self._apply, obj, deleted)

    def _apply(self, obj: dict, deleted: bool) -> None:
        uid = obj["metadata"]["uid"]
        if deleted:
            self.objects.pop(uid, None)
        else:
            self.objects[uid] = obj
        self.on_change(obj, deleted)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.list_fn(**self.list_kwargs, _preload_content=False)
                data = json.loads(listing.data)
                rv = data["metadata"]["resourceVersion"]
                seen = set()
                for item in data["items"]:
                    seen.add(item["metadata"]["uid"])
                    self._emit(item, False)
                for uid, old in list(self.objects.items()):
                    if uid not in seen:
                        self._emit(old, True)
                w = watch.Watch()
                for event in w.stream(self.list_fn, resource_version=rv, timeout_seconds=300,
                                      allow_watch_bookmarks=True, **self.list_kwargs):
                    if self._stop.is_set():
                        w.stop()
                        return
                    kind = event["type"]
                    if kind == "BOOKMARK":
                        continue
                    if kind == "ERROR":
                        break
                    obj = event["raw_object"]
                    self._emit(obj, kind == "DELETED")
            except Exception as e:  # the API server restarting, a 410 Gone: relist
                if self._stop.is_set():
                    return
                log.info("informer %s: %s; relisting", self.name, e.__class__.__name__)
                self._stop.wait(1.0)

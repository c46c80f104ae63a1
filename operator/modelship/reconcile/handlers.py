"""Kopf wiring: every Kopf decorator and setting, and thin handlers that feed the reconcile
loop's work queue.

Every handler only enqueues the ModelDeployment concerned; `Controller.reconcile` does the
work, one ModelDeployment at a time. The handlers are event watchers, not Kopf's
create/update/delete handlers, on purpose: Kopf then writes nothing on the ModelDeployment
(no finalizer, no last-handled-configuration annotation, no progress in status), so GitOps
tools see exactly what they applied, and deleting a ModelDeployment never waits for the
operator (owner references let the garbage collector remove the children). Timers and
daemons are avoided for the same reason (Kopf gives them a finalizer); a resync task
started at start-up reconciles everything periodically instead.

What the handlers share (the settings, the metrics, the controller) is in Kopf's operator
memo: `modelship operator` puts the settings and metrics there (`kopf.run(memo=...)`), the
start-up handler the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import kopf

from .. import api
from ..login import api_client, in_cluster, in_cluster_server
from ..manifests import COMPONENT, DEPLOYMENT_LABEL, MANAGED_BY
from ..settings import Settings, load
from .cache import MD_KIND, WatchCache
from .controller import Controller
from .facts import serving_pod_news
from .kube import Kube
from .metrics import ControllerMetrics
from .resolve import CatalogResolver, HubResolver
from .signals import RouterPoller

log = logging.getLogger("modelship")

CHILD_RESOURCES = (("apps", "v1", "deployments"), ("batch", "v1", "jobs"), ("v1", "services"),
                   ("v1", "persistentvolumeclaims"), ("v1", "pods"))
KINDS = {"deployments": "Deployment", "jobs": "Job", "services": "Service", "persistentvolumeclaims":
         "PersistentVolumeClaim", "pods": "Pod"}  # the watch cache's kinds, by plural
# Kinds watched whoever made them: the watch cache then knows every one (absent there is absent).
# Claims: `storage.existingClaim` names one the operator does not label. Services: so that a name
# not taken is known without asking (a GET of each new ModelDeployment's Service name, and another
# before the create: about 1,000 requests in a burst of 500, bench/README.md §7, "Stop 37"). Both
# are few and seldom change; Deployments and pods, many and busy, are watched by label.
UNFILTERED = ("persistentvolumeclaims", "services")
OURS = {MANAGED_BY: "modelship"}


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf's diff base when nothing diffs: the handlers are event watchers, with no create or
    update handler whose change Kopf would have to detect. Kopf builds an object's "essence"
    (a deep copy of it, less its status) at every watch event all the same: with thousands of
    children, that was the largest share of the operator's CPU (bench/README.md §7). Nothing
    is built, fetched or stored."""

    def build(self, *, body, extra_fields=None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body) -> None:
        return None

    def store(self, *, body, patch, essence) -> None:
        return None


def configure_kopf(settings: kopf.OperatorSettings, config: Settings) -> None:
    """Every Kopf setting the operator relies on, in one place."""
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"  # unused: no handler needs one
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.enabled = False  # the controller posts its own Events, naming the object
    settings.peering.standalone = True  # one active replica by leader election instead (run.py)
    # Resources are found once at start-up (the CRD comes with the chart, before the operator),
    # not by watching every CRD in the cluster: no cluster-wide read of CRDs needed.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    # Filter children on the API server, not in the operator: only objects it manages.
    for *_, plural in CHILD_RESOURCES:
        if plural not in UNFILTERED:
            settings.watching.label_selectors[plural] = f"{MANAGED_BY}=modelship"


@kopf.on.login()
def login(**kwargs):
    # Explicitly, by the project's one rule (Kopf's piggy-backing would take the kubernetes
    # library's default kubeconfig path, fixed when it was first imported).
    if in_cluster():
        # Kopf's own login names https://kubernetes.default.svc, which needs cluster DNS; the
        # address the kubelet gives every pod is what client-go and the kubernetes library use.
        info = kopf.login_with_service_account(**kwargs)
        return dataclasses.replace(info, server=in_cluster_server()) if info else None
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    config = memo.settings = memo.get("settings") or load()
    configure_kopf(settings, config)
    client_ = api_client()
    check_crd(client_)
    hub = HubResolver(ca_bundle=config.hub_ca_bundle)
    resolver = CatalogResolver(config.catalog_file, fallback=hub) if config.catalog_file else hub
    metrics = memo.get("metrics") or ControllerMetrics()
    cache = watch_cache() if config.cache_reads else None
    memo.controller = Controller(config, Kube(client_, config.field_manager, cache, config.api_in_flight), resolver, metrics)
    memo.stop = asyncio.Event()
    memo.resync = asyncio.create_task(memo.controller.resync(memo.stop))
    poller = RouterPoller(config.autoscaler, memo.controller.autoscaler, memo.controller.kube.router_urls)
    memo.poller = asyncio.create_task(poller.run(memo.stop))
    log.info("modelship operator started (namespaces: %s)", ", ".join(config.namespaces) or "all")


def watch_cache() -> WatchCache:
    """The watch cache of every kind watched, those watched whoever made them held whole."""
    return WatchCache((*KINDS.values(), MD_KIND), whole={KINDS[p] for p in UNFILTERED} | {MD_KIND})


def check_crd(client_) -> None:
    """Stop with one clear line when the API server does not serve ModelDeployments (with
    scanning off, Kopf would otherwise wait for them silently)."""
    from kubernetes.client import CustomObjectsApi
    from kubernetes.client.exceptions import ApiException

    try:
        CustomObjectsApi(client_).get_api_resources(api.GROUP, api.VERSION)
    except ApiException as e:
        if e.status == 404:
            raise kopf.PermanentError(f"the API server does not serve {api.GROUP}/{api.VERSION}: install the "
                                      "ModelDeployment CRD (the chart's crds.enabled, or kubectl apply "
                                      "--server-side -f crds/), then restart the operator") from None
        raise


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_) -> None:
    if memo.get("controller"):
        memo.stop.set()
        await memo.resync
        await memo.poller
        await memo.controller.close()


@kopf.on.probe(id="queue")
def queue_depth(memo: kopf.Memo, **_) -> int:
    controller = memo.get("controller")
    return len(controller.queue) if controller else 0


def remember(controller: Controller, kind: str, event: dict) -> bool:
    """Into the watch cache first, so that the reconcile this event starts sees it; whether
    the event is news (the echo of the operator's own write is not: the reconcile that wrote
    it runs once more by itself, `Controller._reconcile`)."""
    if controller.kube.cache is not None:
        return controller.kube.cache.event(kind, event)
    return True


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def modeldeployment_changed(name: str, namespace: str, event: dict, memo: kopf.Memo, **_) -> None:
    if remember(memo.controller, MD_KIND, event):
        memo.controller.enqueue(namespace, name)


async def child_changed(labels: dict, namespace: str, meta: dict, event: dict, resource: kopf.Resource,
                        memo: kopf.Memo, **_) -> None:
    controller: Controller | None = memo.get("controller")
    if controller is None:
        return
    kind = KINDS[resource.plural]
    before = _serving_pod(controller, kind, labels, meta, event)
    news = remember(controller, kind, event)
    if news and before is not None and serving_pod_news(before) == serving_pod_news(event.get("object") or {}):
        news = False  # (a serving pod's change that the operator does not read: it started, turned Ready)
    if labels.get(DEPLOYMENT_LABEL):
        if news:
            controller.enqueue_soon(namespace, labels[DEPLOYMENT_LABEL])
    else:  # an object of a shared volume (the shared cache, its download Jobs; a download Job on a
        # claim of the user's): every owner cares, and every ModelDeployment waiting for the Job,
        # echo or not (only the one that wrote it runs again by itself)
        waiting = {ref["name"] for ref in meta.get("ownerReferences") or [] if ref.get("kind") == api.KIND}
        if resource.plural == "jobs":
            waiting |= {name for _, name in controller.window.followers(namespace, meta["name"])}
        for md in sorted(waiting):
            controller.enqueue_soon(namespace, md)


def _serving_pod(controller: Controller, kind: str, labels: dict, meta: dict, event: dict) -> dict | None:
    """The watch cache's copy of a serving pod that this event changes, before the change
    (None for any other object or event)."""
    cache = controller.kube.cache
    if cache is None or kind != "Pod" or labels.get(COMPONENT) != "server" or event.get("type") != "MODIFIED":
        return None
    return cache.get(kind, meta.get("namespace") or "", meta.get("name") or "")


for resource in CHILD_RESOURCES:
    if resource[-1] in UNFILTERED:
        kopf.on.event(*resource, id=f"child-{resource[-1]}")(child_changed)  # (not ours: enqueues nothing)
    else:
        kopf.on.event(*resource, labels=OURS, id=f"child-{resource[-1]}")(child_changed)

"""Kopf wiring: thin handlers that feed the reconcile loop's work queue.

Every handler only enqueues the ModelDeployment concerned; `Controller.reconcile` does the
work, one ModelDeployment at a time. The handlers are event watchers, not Kopf's
create/update/delete handlers, on purpose: Kopf then writes nothing on the ModelDeployment
(no finalizer, no last-handled-configuration annotation, no progress in status), so GitOps
tools see exactly what they applied, and deleting a ModelDeployment never waits for the
operator (owner references let the garbage collector remove the children). Timers and
daemons are avoided for the same reason (Kopf gives them a finalizer); a resync task
started at start-up reconciles everything periodically instead.
"""

from __future__ import annotations

import asyncio
import logging

import kopf

from .. import api
from ..manifests import DEPLOYMENT_LABEL, MANAGED_BY
from .controller import Controller
from .kube import Kube
from .resolve import CatalogResolver, HubResolver
from ..login import api_client, in_cluster
from ..settings import Settings, load

log = logging.getLogger("modelship")

STATE: dict = {}  # the running Controller and its resync task, set up at start-up


def configure_kopf(settings: kopf.OperatorSettings, config: Settings) -> None:
    """Every Kopf setting the operator relies on, in one place."""
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"  # unused: no handler needs one
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration")
    settings.posting.enabled = False  # the controller posts its own Events, naming the object
    settings.peering.standalone = config.standalone
    settings.peering.name = "modelship"
    settings.peering.mandatory = not config.standalone
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    # Filter children on the API server, not in the operator: only objects it manages.
    for plural in CHILD_PLURALS:
        settings.watching.label_selectors[plural] = f"{MANAGED_BY}=modelship"


@kopf.on.login()
def login(**kwargs):
    # Explicitly, by the project's one rule (Kopf's piggy-backing would take the kubernetes
    # library's default kubeconfig path, fixed when it was first imported).
    if in_cluster():
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_) -> None:
    config = STATE.get("settings") or load()
    configure_kopf(settings, config)
    kube = Kube(api_client(), config.field_manager)
    hub = HubResolver()
    resolver = CatalogResolver(config.catalog_file, fallback=hub) if config.catalog_file else hub
    controller = Controller(config, kube, resolver)
    stop = asyncio.Event()
    STATE.update(settings=config, controller=controller, stop=stop,
                 resync=asyncio.create_task(controller.resync(stop)))
    log.info("modelship operator started (namespaces: %s)", ", ".join(config.namespaces) or "all")


@kopf.on.cleanup()
async def cleanup(**_) -> None:
    if "controller" in STATE:
        STATE["stop"].set()
        await STATE["resync"]
        await STATE["controller"].queue.close()


@kopf.on.probe(id="queue")
def queue_depth(**_) -> int:
    controller = STATE.get("controller")
    return len(controller.queue) if controller else 0


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def modeldeployment_changed(name: str, namespace: str, **_) -> None:
    STATE["controller"].enqueue(namespace, name)


async def _child_changed(labels: dict, namespace: str, meta: dict, **_) -> None:
    if "controller" not in STATE:
        return
    if labels.get(DEPLOYMENT_LABEL):
        STATE["controller"].enqueue(namespace, labels[DEPLOYMENT_LABEL])
    else:  # a shared object (the cache volume, its download Jobs): every owner cares
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == api.KIND:
                STATE["controller"].enqueue(namespace, ref["name"])


_OURS = {MANAGED_BY: "modelship"}
CHILD_RESOURCES = (("apps", "v1", "deployments"), ("batch", "v1", "jobs"), ("v1", "services"),
                   ("v1", "persistentvolumeclaims"), ("v1", "pods"))
CHILD_PLURALS = [r[-1] for r in CHILD_RESOURCES]
for resource in CHILD_RESOURCES:
    kopf.on.event(*resource, labels=_OURS, id=f"child-{resource[-1]}")(_child_changed)

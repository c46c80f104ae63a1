"""What serves the model: the engine's Deployment and the Service in front of it."""

from __future__ import annotations

from types import ModuleType

from ..api import ModelDeployment, ResolvedModel
from ..settings import Settings
from ..units import quantity
from . import llamacpp, sglang, tgi, vllm
from .meta import REPO, REVISION, SPEC_HASH, WEIGHTS_BYTES, claim_name, digest, finish, labels, selector
from .pods import PORT, Placement, restricted_container, restricted_pod, schedule
from .volume import MODELS_MOUNT

ENGINES: dict[str, ModuleType] = {m.NAME: m for m in (tgi, vllm, sglang, llamacpp)}


def resources(md: ModelDeployment, placement: Placement) -> dict:
    """The pool's default requests and limits, overridden by the spec's, and the GPUs."""
    out: dict[str, dict] = {k: dict(v) for k, v in placement.profile.resources.items()}
    asked = md.spec.resources.wire() if md.spec.resources else {}
    for kind in ("requests", "limits"):
        out.setdefault(kind, {}).update({k: str(v) for k, v in (asked.get(kind) or {}).items()})
    # Where a request and its limit disagree, the pool's default gives way to what the spec
    # asked (a request above its limit is refused; the CRD refuses a spec that has both): a
    # limit asked for lowers the pool's request, as Kubernetes does when only a limit is given,
    # and a request asked for raises the pool's limit. The spec's own values are never changed.
    for key, limit in out["limits"].items():
        request = out["requests"].get(key)
        if request is not None and quantity(request) > quantity(limit):
            if key in (asked.get("requests") or {}):
                out["limits"][key] = request
            else:
                out["requests"][key] = limit
    out = {kind: v for kind, v in out.items() if v}
    if placement.gpus and placement.profile.gpu_resource:
        out.setdefault("limits", {})[placement.profile.gpu_resource] = str(placement.gpus)
    return out


def _probe(period: int, failures: int, path: str = "/health", timeout: int = 5) -> dict:
    return {"httpGet": {"path": path, "port": "http"}, "timeoutSeconds": timeout, "periodSeconds": period,
            "failureThreshold": failures}


def _container(md: ModelDeployment, resolved: ResolvedModel, placement: Placement, settings: Settings,
               engine: ModuleType) -> dict:
    env = [{"name": "HOME", "value": "/tmp"}, *engine.env(), *(e.wire() for e in md.spec.engine.env)]
    mounts = [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"}]
    if engine.shared_memory(placement.gpus):
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    return {
        "name": engine.NAME, "image": engine.image(md, placement.gpus, settings),
        **({"command": list(engine.COMMAND)} if engine.COMMAND else {}),
        "args": engine.args(md, resolved, placement.gpus), "env": env,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        # Startup is generous (big models load for minutes) and asked every second, so that a
        # model woken from zero serves within a second of loading (a held request waits on it);
        # liveness and readiness begin after it.
        "startupProbe": _probe(1, max(1, settings.startup_timeout_seconds)),
        "readinessProbe": _probe(5, 2),
        "livenessProbe": _probe(10, 6, *engine.LIVENESS),
        "resources": resources(md, placement),
        "securityContext": restricted_container(),
        "volumeMounts": mounts,
    }


def _strategy(md: ModelDeployment, gpus: int) -> dict:
    """Replace pods one at a time (no surge pod) where a surge pod could not run: a full GPU
    pool has no room for it, and a ReadWriteOnce volume cannot attach to a second node."""
    many_nodes = md.spec.storage.access_mode in ("ReadWriteMany", "ReadOnlyMany")
    if gpus or not many_nodes:
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def deployment(md: ModelDeployment, resolved: ResolvedModel, placement: Placement, settings: Settings,
               replicas: int | None = None) -> dict:
    """The serving Deployment; `replicas`: the autoscaler's, with autoscaling on (else spec.replicas)."""
    engine = ENGINES[resolved.engine]
    volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": claim_name(md), "readOnly": True}},
               {"name": "tmp", "emptyDir": {}}]
    shm = engine.shared_memory(placement.gpus)
    if shm:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
    pod_spec: dict = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": restricted_pod(),
        "containers": [_container(md, resolved, placement, settings, engine)],
        "volumes": volumes,
    }
    schedule(pod_spec, placement.profile)
    template = {"metadata": {"labels": {**labels(md, "server"), "modelship.io/engine": engine.NAME}},
                "spec": pod_spec}
    template["metadata"]["annotations"] = {SPEC_HASH: digest(template), REVISION: resolved.sha,
                                           REPO: resolved.repo}
    return finish({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": md.name, "labels": labels(md, "server"),
                     "annotations": {REVISION: resolved.sha, REPO: resolved.repo,
                                     WEIGHTS_BYTES: str(resolved.total_bytes)}},
        "spec": {"replicas": md.spec.replicas if replicas is None else replicas, "selector": {"matchLabels": selector(md)},
                 "strategy": _strategy(md, placement.gpus), "revisionHistoryLimit": 3, "template": template},
    }, md)


def service(md: ModelDeployment) -> dict:
    return finish({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": md.name, "labels": labels(md, "server")},
        "spec": {"selector": selector(md),
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP",
                            "appProtocol": "http"}]},
    }, md)

"""Pure builders: (ModelDeployment, resolved model, placement, settings) -> child objects.

No I/O here. Every child carries the same labels, an owner reference to its ModelDeployment
(so deleting it garbage-collects them) and `modelship.io/applied-hash`, the hash of what the
operator wants it to be, which `plan()` compares with what it observes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from decimal import Decimal
from dataclasses import dataclass

from . import api
from .api import ModelDeployment, ResolvedModel
from .settings import PoolProfile, Settings

PORT = 8080
MODELS_MOUNT = "/models"
APPLIED_HASH = "modelship.io/applied-hash"
SPEC_HASH = "modelship.io/spec-hash"
REVISION = "modelship.io/revision"
REPO = "modelship.io/repo"
WEIGHTS_BYTES = "modelship.io/weights-bytes"
KEEP = "modelship.io/keep"  # a collection Job's snapshots to keep
SNAPSHOT_PREFIX = "snapshot.modelship.io/"  # a volume's ledger: one annotation per snapshot put on it
DEPLOYMENT_LABEL = "modelship.io/deployment"
SHARED_CACHE = "modelship.io/shared-cache"
SHARED_CLAIM = "modelship-cache"  # the namespace's shared, content-addressed cache volume
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
UID, GID = 1000, 1000  # the engines run as this user and group
FETCH_UID = 65532  # the modelship image's user (Dockerfile); files it writes get group GID (fsGroup)
GIB = 1024 ** 3


@dataclass(frozen=True)
class Placement:
    pool: str
    profile: PoolProfile
    gpus: int


def digest(obj: object, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:n]


def labels(md: ModelDeployment, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "modelship", "app.kubernetes.io/instance": md.name,
            COMPONENT: component, MANAGED_BY: "modelship", DEPLOYMENT_LABEL: md.name}


def selector(md: ModelDeployment) -> dict[str, str]:
    return {DEPLOYMENT_LABEL: md.name, COMPONENT: "server"}


def selector_string(md: ModelDeployment) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(md).items())


def owner_reference(md: ModelDeployment, controller: bool = True) -> dict:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": md.name, "uid": md.metadata["uid"],
            "controller": controller, "blockOwnerDeletion": True}


def owned_by(obj: dict, uid: str | None) -> bool:
    """Whether `obj` has an owner reference to the object with this uid."""
    return any(r.get("uid") == uid for r in (obj.get("metadata") or {}).get("ownerReferences") or [])


def shared_labels(component: str) -> dict[str, str]:
    """Objects of the shared cache belong to every ModelDeployment that uses them, none in
    particular: they carry no ModelDeployment's name."""
    return {"app.kubernetes.io/name": "modelship", COMPONENT: component, MANAGED_BY: "modelship",
            SHARED_CACHE: SHARED_CLAIM}


def field_manager_of(owner: dict, obj: dict) -> str:
    """The field manager of one ModelDeployment's share of a shared object (its owner
    reference): server-side apply then keeps every owner's entry."""
    return f"modelship/{obj['metadata']['namespace']}/{owner['name']}"[:128]


def _finish(obj: dict, md: ModelDeployment, shared: bool = False) -> dict:
    """Add namespace, owner reference and the applied-hash annotation. A shared object gets this
    ModelDeployment as one of its owners: the garbage collector deletes it with the last one."""
    meta = obj["metadata"]
    meta["namespace"] = md.namespace
    meta["ownerReferences"] = [owner_reference(md, controller=not shared)]
    meta.setdefault("annotations", {})[APPLIED_HASH] = digest(obj)
    return obj


# --- names and paths ---------------------------------------------------------------------------


def snapshot_dir(resolved: ResolvedModel) -> str:
    """The Hub cache layout: one folder per repo, one snapshot per commit."""
    return f"{MODELS_MOUNT}/models--{resolved.repo.replace('/', '--')}/snapshots/{resolved.sha}"


def on_shared_cache(md: ModelDeployment) -> bool:
    """Whether the weights live on the namespace's shared cache volume (a claim of the user's
    own wins over storage.sharedCache)."""
    return md.spec.storage.shared_cache and not md.spec.storage.existing_claim


def claim_name(md: ModelDeployment) -> str:
    if md.spec.storage.existing_claim:
        return md.spec.storage.existing_claim
    return SHARED_CLAIM if md.spec.storage.shared_cache else f"{md.name}-weights"


def service_url(md: ModelDeployment) -> str:
    return f"http://{md.name}.{md.namespace}.svc"


# --- sizes -----------------------------------------------------------------------------------


_SUFFIX = {"": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10 ** 3, "M": 10 ** 6,
           "G": 10 ** 9, "T": 10 ** 12, "P": 10 ** 15, "E": 10 ** 18,
           "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}
_QUANTITY = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)")


def quantity(q: int | str) -> Decimal:
    """A Kubernetes quantity ("20Gi", "1.5G", "1e9", "500m", ".5Gi", 4096) as a number;
    ValueError if it is none (the grammar of apimachinery's resource.Quantity)."""
    if isinstance(q, int):
        return Decimal(q)
    m = _QUANTITY.fullmatch(q.strip())
    if not m:
        raise ValueError(f"{q!r} is not a quantity")
    number, exponent, suffix = m.groups()
    return Decimal(number + (exponent or "")) * Decimal(_SUFFIX[suffix or ""])


def quantity_bytes(q: int | str) -> int:
    return math.ceil(quantity(q))


def volume_size(total_bytes: int, margin_percent: int) -> str:
    """Files' total plus the margin, at least 1Gi more, rounded up to whole GiB."""
    want = max(total_bytes * (100 + margin_percent) / 100, total_bytes + GIB)
    return f"{math.ceil(want / GIB)}Gi"


# --- children --------------------------------------------------------------------------------


def pvc(md: ModelDeployment, resolved: ResolvedModel, settings: Settings, total_bytes: int | None = None) -> dict:
    st = md.spec.storage
    total = resolved.total_bytes if total_bytes is None else total_bytes
    size = str(st.size) if st.size is not None else volume_size(total, settings.storage_margin_percent)
    spec: dict = {"accessModes": [st.access_mode], "resources": {"requests": {"storage": size}}}
    if st.storage_class_name:
        spec["storageClassName"] = st.storage_class_name
    shared = st.shared_cache
    return _finish({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim_name(md),
                                 "labels": shared_labels("weights") if shared else labels(md, "weights")},
                    "spec": spec}, md, shared=shared)


def _restricted_container() -> dict:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "readOnlyRootFilesystem": True, "seccompProfile": {"type": "RuntimeDefault"}}


def _restricted_pod(uid: int = UID) -> dict:
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": GID, "fsGroup": GID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def download_job(md: ModelDeployment, resolved: ResolvedModel, endpoint: str, settings: Settings,
                 pin_node: str | None = None, serving: str | None = None) -> dict:
    """The Job that puts the files on the volume. Its name fingerprints everything it does
    (a Job's pod template cannot change, so a different download is a different Job).
    `pin_node` runs it on the node of a serving pod, where a ReadWriteOnce volume is attached."""
    args = ["fetch", "--repo", resolved.repo, "--revision", resolved.sha, "--endpoint", endpoint,
            "--dest", MODELS_MOUNT, "--user", md.namespace]
    args += [f"--file={file_spec(f)}" for f in resolved.files]
    if not md.spec.storage.existing_claim and not md.spec.storage.shared_cache:
        # A volume of its own holds what is served and what is about to be, nothing else.
        args += ["--prune"] + (["--keep", serving] if serving else [])
    env = [{"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"}]
    ref = md.spec.model.token_secret_ref
    if ref:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    elif settings.default_token_secret:  # the operator's default, where the namespace has it
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": settings.default_token_secret, "key": "token", "optional": True}}})
    return _volume_job(md, settings, "download", "fetch", args, env, pin_node,
                       {REVISION: resolved.sha, REPO: resolved.repo}, [resolved.repo, resolved.sha],
                       backoff=settings.download_backoff_limit, deadline=settings.download_deadline_seconds)


def file_spec(f: api.ResolvedFile) -> str:
    """A file as `modelship fetch --file` takes it: SIZE:SHA256:PATH, SIZE:git-SHA1:PATH or SIZE::PATH."""
    return f"{f.size}:{f.sha256 or (f'git-{f.git_sha1}' if f.git_sha1 else '')}:{f.path}"


def snapshot_key(repo: str, sha: str) -> str:
    """The name of a snapshot in a volume's ledger and in `--keep`."""
    return f"{repo}@{sha}"


def ledger_annotation(key: str) -> str:
    """The PVC annotation that records that a snapshot was put on the volume."""
    return f"{SNAPSHOT_PREFIX}{digest(key, 12)}"


def collect_job(md: ModelDeployment, settings: Settings, keep: list[str], pin_node: str | None = None) -> dict:
    """The Job that removes from the volume every snapshot not in `keep` (and the blobs only
    they used). Named by what it keeps: one collection per set of snapshots in use."""
    keep = sorted(keep)
    args = ["collect", "--dest", MODELS_MOUNT, "--user", md.namespace] + [a for k in keep for a in ("--keep", k)]
    return _volume_job(md, settings, "collect", "collect", args, [], pin_node, {KEEP: ",".join(keep)}, keep,
                       backoff=2, deadline=1800)


def _volume_job(md: ModelDeployment, settings: Settings, component: str, verb: str, args: list[str],
                env: list[dict], pin_node: str | None, annotations: dict[str, str], identity: list,
                backoff: int, deadline: int) -> dict:
    """A Job of the modelship image that works on the weights' volume (and on nothing else)."""
    shared = on_shared_cache(md)
    job_labels = shared_labels(component) if shared else labels(md, component)
    pod = {
        "metadata": {"labels": dict(job_labels)},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": _restricted_pod(FETCH_UID),
            "containers": [{
                "name": verb, "image": settings.images.modelship, "args": args, "env": env,
                "securityContext": _restricted_container(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                # it writes only to the volume: no /tmp (on the test bed's local node an
                # emptyDir there would also hide a checkout that lives under /tmp)
                "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT}],
            }],
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": claim_name(md)}}],
        },
    }
    if settings.download_pool:
        _schedule(pod["spec"], settings.pools[settings.download_pool])
    # Shared: named by what it does alone, so ModelDeployments of one repo@sha share one Job.
    name = f"{'modelship' if shared else md.name}-{verb}-{digest([*identity, pod], 8)}"
    if pin_node:
        pod["spec"].pop("nodeSelector", None)
        pod["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                    "values": [pin_node]}]}]}}}
    return _finish({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": dict(job_labels), "annotations": annotations},
        "spec": {"backoffLimit": backoff, "activeDeadlineSeconds": deadline, "template": pod},
    }, md, shared=shared)


def _schedule(pod_spec: dict, profile: PoolProfile) -> None:
    """The pool's node selector, tolerations and affinity."""
    if profile.node_selector:
        pod_spec["nodeSelector"] = dict(profile.node_selector)
    if profile.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in profile.tolerations]
    if profile.affinity:
        pod_spec["affinity"] = profile.affinity


def _flag(args: list[str], flag: str, value: object) -> None:
    if value is not None:
        args += [flag, str(value)]


def llamacpp_args(md: ModelDeployment, resolved: ResolvedModel, gpus: int) -> list[str]:
    s = md.spec.serving or api.ServingSpec()
    model_file = resolved.model_file or next(f.path for f in resolved.files if f.path.endswith(".gguf"))
    args = ["-m", f"{snapshot_dir(resolved)}/{model_file}", "--host", "0.0.0.0", "--port", str(PORT),
            "--alias", md.name, "--metrics"]
    if s.chat_template:
        args += ["--chat-template", s.chat_template]
    else:
        args.append("--jinja")
    # Default: the model's own context, at most 4096 (llama.cpp would take the trained length,
    # which can be 128k tokens and more memory than the pool has).
    _flag(args, "-c", s.context_length or min(resolved.context_length or 4096, 4096))
    _flag(args, "--parallel", s.parallel)
    _flag(args, "-t", s.threads)
    if gpus:
        _flag(args, "-ngl", s.gpu_layers if s.gpu_layers is not None else 999)
    g = s.generation or api.GenerationDefaults()
    _flag(args, "--temp", g.temperature)
    _flag(args, "--top-p", g.top_p)
    _flag(args, "--top-k", g.top_k)
    _flag(args, "-n", g.max_new_tokens)
    return args + list(md.spec.engine.args)


def tgi_args(md: ModelDeployment, resolved: ResolvedModel, gpus: int) -> list[str]:
    s = md.spec.serving or api.ServingSpec()
    args = ["--model-id", snapshot_dir(resolved), "--port", str(PORT), "--hostname", "0.0.0.0",
            "--num-shard", str(max(gpus, 1))]
    _flag(args, "--max-concurrent-requests", s.max_concurrent_requests)
    _flag(args, "--max-input-tokens", s.max_input_tokens)
    _flag(args, "--max-total-tokens", s.max_total_tokens or s.context_length)
    _flag(args, "--quantize", s.quantize)
    _flag(args, "--dtype", s.dtype)
    return args + list(md.spec.engine.args)


def engine_image(md: ModelDeployment, engine: str, gpus: int, settings: Settings) -> str:
    if md.spec.engine.image:
        return md.spec.engine.image
    if engine == "tgi":
        return settings.images.tgi
    return settings.images.llamacpp_cuda if gpus else settings.images.llamacpp_cpu


def _resources(md: ModelDeployment, placement: Placement) -> dict:
    out: dict[str, dict] = {k: dict(v) for k, v in placement.profile.resources.items()}
    if md.spec.resources:
        for kind in ("requests", "limits"):
            override = getattr(md.spec.resources, kind)
            if override:
                out.setdefault(kind, {}).update({k: str(v) for k, v in override.items()})
    # A limit below the pool's default request lowers the request, as Kubernetes itself does
    # when only a limit is given (a request above its limit is refused).
    for key, limit in (out.get("limits") or {}).items():
        request = (out.get("requests") or {}).get(key)
        if request is not None and quantity(request) > quantity(limit):
            out["requests"][key] = limit
    if placement.gpus and placement.profile.gpu_resource:
        out.setdefault("limits", {})[placement.profile.gpu_resource] = str(placement.gpus)
    return out


def deployment(md: ModelDeployment, resolved: ResolvedModel, placement: Placement, settings: Settings) -> dict:
    engine, gpus = resolved.engine, placement.gpus
    args = tgi_args(md, resolved, gpus) if engine == "tgi" else llamacpp_args(md, resolved, gpus)
    env = [{"name": "HOME", "value": "/tmp"}]
    if engine == "tgi":
        env += [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "HF_HOME", "value": "/tmp/hf"}]
    env += [e.wire() for e in md.spec.engine.env]
    def probe(period: int, failures: int) -> dict:
        return {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 5, "periodSeconds": period,
                "failureThreshold": failures}
    container = {
        "name": engine, "image": engine_image(md, engine, gpus, settings), "args": args, "env": env,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        # Startup is generous (big models load for minutes); liveness and readiness begin after it.
        "startupProbe": probe(5, max(1, settings.startup_timeout_seconds // 5)),
        "readinessProbe": probe(5, 2),
        "livenessProbe": probe(10, 6),
        "resources": _resources(md, placement),
        "securityContext": _restricted_container(),
        "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes = [{"name": "models", "persistentVolumeClaim": {"claimName": claim_name(md), "readOnly": True}},
               {"name": "tmp", "emptyDir": {}}]
    if engine == "tgi":  # NCCL shares memory between shards through /dev/shm
        container["volumeMounts"].append({"name": "shm", "mountPath": "/dev/shm"})
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}})
    pod_spec: dict = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": _restricted_pod(),
        "containers": [container],
        "volumes": volumes,
    }
    _schedule(pod_spec, placement.profile)
    template_labels = {**labels(md, "server"), "modelship.io/engine": engine}
    template = {"metadata": {"labels": template_labels}, "spec": pod_spec}
    template["metadata"]["annotations"] = {SPEC_HASH: digest(template), REVISION: resolved.sha,
                                           REPO: resolved.repo}
    # Replace pods one at a time (no surge pod) where a surge pod could not run: a full GPU
    # pool has no room for it, and a ReadWriteOnce volume cannot attach to a second node.
    shared = md.spec.storage.access_mode in ("ReadWriteMany", "ReadOnlyMany")
    strategy = ({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
                if gpus or not shared else
                {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    return _finish({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": md.name, "labels": labels(md, "server"),
                     "annotations": {REVISION: resolved.sha, REPO: resolved.repo,
                                     WEIGHTS_BYTES: str(resolved.total_bytes)}},
        "spec": {"replicas": md.spec.replicas, "selector": {"matchLabels": selector(md)},
                 "strategy": strategy, "revisionHistoryLimit": 3, "template": template},
    }, md)


def service(md: ModelDeployment) -> dict:
    return _finish({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": md.name, "labels": labels(md, "server")},
        "spec": {"selector": selector(md),
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP",
                            "appProtocol": "http"}]},
    }, md)

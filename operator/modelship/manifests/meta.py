"""What every child object shares: its names, labels, annotations and owner references.

Every child carries the same labels, an owner reference to its ModelDeployment (so deleting
it garbage-collects them) and `modelship.io/applied-hash`, the hash of what the operator
wants it to be, which the plan compares with what it observes.
"""

from __future__ import annotations

import hashlib
import json

from .. import api
from ..api import ModelDeployment

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
CLAIM_LABEL = "modelship.io/claim"  # the Jobs that work on a user's claim: which claim (`claim_label`)
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"


def digest(obj: object, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:n]


def labels(md: ModelDeployment, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "modelship", "app.kubernetes.io/instance": md.name,
            COMPONENT: component, MANAGED_BY: "modelship", DEPLOYMENT_LABEL: md.name}


def _unnamed_labels(component: str) -> dict[str, str]:
    """The labels of an object that belongs to no ModelDeployment in particular."""
    return {"app.kubernetes.io/name": "modelship", COMPONENT: component, MANAGED_BY: "modelship"}


def cache_labels(component: str) -> dict[str, str]:
    """Objects of the shared cache belong to every ModelDeployment that uses them, none in
    particular: they carry no ModelDeployment's name."""
    return {**_unnamed_labels(component), SHARED_CACHE: SHARED_CLAIM}


def claim_label(claim: str) -> str:
    """The value of CLAIM_LABEL for a claim: its name, or a digest of a name too long for a label."""
    return claim if len(claim) <= 63 else f"sha-{digest(claim, 32)}"


def volume_job_labels(md: ModelDeployment, component: str) -> dict[str, str]:
    """The labels of a Job that works on its volume: its own, or those of a volume shared by
    several ModelDeployments (the shared cache, a claim of the user's), which name none."""
    if on_shared_cache(md):
        return cache_labels(component)
    if md.spec.storage.existing_claim:
        return {**_unnamed_labels(component), CLAIM_LABEL: claim_label(md.spec.storage.existing_claim)}
    return labels(md, component)


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


def field_manager_of(owner: dict, obj: dict) -> str:
    """The field manager of one ModelDeployment's share of a co-owned object (its owner
    reference): server-side apply then keeps every owner's entry."""
    return f"modelship/{obj['metadata']['namespace']}/{owner['name']}"[:128]


def finish(obj: dict, md: ModelDeployment, co_owned: bool = False) -> dict:
    """Add namespace, owner reference and the applied-hash annotation. A co-owned object (of
    the shared cache) gets this ModelDeployment as one of its owners: the garbage collector
    deletes it with the last one."""
    meta = obj["metadata"]
    meta["namespace"] = md.namespace
    meta["ownerReferences"] = [owner_reference(md, controller=not co_owned)]
    meta.setdefault("annotations", {})[APPLIED_HASH] = digest(obj)
    return obj


# --- names -------------------------------------------------------------------------------------


def on_shared_cache(md: ModelDeployment) -> bool:
    """Whether the weights live on the namespace's shared cache volume (a claim of the user's
    own wins over storage.sharedCache)."""
    return md.spec.storage.shared_cache and not md.spec.storage.existing_claim


def shares_volume_jobs(md: ModelDeployment) -> bool:
    """Whether the Jobs on its volume are shared with the other ModelDeployments that use the
    volume: on the shared cache, and on a claim of the user's (several may name one). Such a
    Job is named by what it does alone, so one Job puts one repo@sha on one volume, co-owned."""
    return on_shared_cache(md) or bool(md.spec.storage.existing_claim)


def claim_name(md: ModelDeployment) -> str:
    if md.spec.storage.existing_claim:
        return md.spec.storage.existing_claim
    return SHARED_CLAIM if md.spec.storage.shared_cache else f"{md.name}-weights"


def service_url(md: ModelDeployment) -> str:
    return f"http://{md.name}.{md.namespace}.svc"


def snapshot_key(repo: str, sha: str) -> str:
    """The name of a snapshot in a volume's ledger and in `--keep`."""
    return f"{repo}@{sha}"


def ledger_annotation(key: str) -> str:
    """The PVC annotation that records that a snapshot was put on the volume."""
    return f"{SNAPSHOT_PREFIX}{digest(key, 12)}"

"""What every pod and container the operator makes shares: the `restricted` security
contexts, a pool's scheduling, and command-line flags."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import PoolProfile

UID, GID = 1000, 1000  # the engines run as this user and group
PORT = 8080  # the engines listen here
FETCH_UID = 65532  # the modelship image's user (Dockerfile); files it writes get group GID (fsGroup)


@dataclass(frozen=True)
class Placement:
    """Where a ModelDeployment's serving pods run: a pool, and their GPUs each."""

    pool: str
    profile: PoolProfile
    gpus: int


def restricted_container() -> dict:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "readOnlyRootFilesystem": True, "seccompProfile": {"type": "RuntimeDefault"}}


def restricted_pod(uid: int = UID) -> dict:
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": GID, "fsGroup": GID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def schedule(pod_spec: dict, profile: PoolProfile) -> None:
    """The pool's node selector, tolerations and affinity."""
    if profile.node_selector:
        pod_spec["nodeSelector"] = dict(profile.node_selector)
    if profile.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in profile.tolerations]
    if profile.affinity:
        pod_spec["affinity"] = profile.affinity


def pin(pod_spec: dict, node: str) -> None:
    """Run on this node only (where a ReadWriteOnce volume is attached), whatever the pool says."""
    pod_spec.pop("nodeSelector", None)
    pod_spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}


def flag(args: list[str], name: str, value: object) -> None:
    """Append `name value` unless the value is unset."""
    if value is not None:
        args += [name, str(value)]

"""The facts the plan decides on, parsed once from the observed children: what the serving
Deployment serves and how far it got, the volume's size and ledger, the Jobs' states, and
why pods are not ready. The plan's stages read these, never the raw objects' fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api import ModelDeployment
from ..manifests import KEEP, REPO, REVISION, SNAPSHOT_PREFIX, WEIGHTS_BYTES, owned_by, snapshot_key
from .observe import job_state
from .types import Observed


@dataclass(frozen=True)
class Served:
    """What the serving Deployment serves now (its annotations; all None without one)."""

    repo: str | None = None
    sha: str | None = None
    weights_bytes: int = 0

    def key(self) -> str | None:
        """Its snapshot ("repo@sha"), where both are known."""
        return snapshot_key(self.repo, self.sha) if self.repo and self.sha else None


@dataclass(frozen=True)
class Rollout:
    """The serving Deployment's progress, from its status."""

    exists: bool = False
    replicas: int = 0
    ready: int = 0
    updated: int = 0
    settled: bool = False  # its controller has seen its latest spec


@dataclass(frozen=True)
class Volume:
    """The weights' claim, as observed."""

    exists: bool = False
    request: str = "0"  # spec.resources.requests.storage
    uid: str | None = None
    joined: bool = False  # this ModelDeployment is among its owners
    ledger: dict[str, str] = field(default_factory=dict)  # annotation -> repo@sha the operator let onto it

    def holds(self, key: str) -> bool:
        return key in self.ledger.values()


@dataclass(frozen=True)
class JobFacts:
    name: str
    state: str  # Running, Complete or Failed
    why: str  # why it failed
    owned: bool  # this ModelDeployment is among its owners
    body: dict  # as observed (a Job of the shared cache is joined by applying it with one's own share)
    keep: frozenset[str] = frozenset()  # a collection's snapshots kept


def pod_problems(pods: list[dict], limit: int = 3) -> list[str]:
    """Why serving pods are not ready, in the words of the scheduler and the kubelet."""
    out = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        name, status = pod["metadata"]["name"], pod.get("status") or {}
        sched = next((c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
        if sched and sched.get("status") == "False":
            out.append(f"pod {name}: {sched.get('reason', 'Unschedulable')}: {sched.get('message', '')}".strip())
            continue
        for cs in status.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                last = ((cs.get("lastState") or {}).get("terminated") or {})
                code = f" (last exit code {last['exitCode']})" if "exitCode" in last else ""
                msg = waiting.get("message", "")
                out.append(f"pod {name}: {waiting['reason']}{code}{': ' + msg if msg else ''}")
    return out[:limit]


def crash_looping(pods: list[dict]) -> bool:
    """A serving container (of a pod not being deleted) restarts in a loop."""
    return any(((cs.get("state") or {}).get("waiting") or {}).get("reason") == "CrashLoopBackOff"
               for p in pods if not p["metadata"].get("deletionTimestamp")
               for cs in (p.get("status") or {}).get("containerStatuses") or [])


def unschedulable(pods: list[dict]) -> str | None:
    """The scheduler's message for a serving pod it cannot place for want of room
    ("0/3 nodes are available: 1 Insufficient nvidia.com/gpu, ..."), if any."""
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp"):
            continue
        for c in (pod.get("status") or {}).get("conditions") or []:
            if (c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
                    and "Insufficient" in (c.get("message") or "")):
                return c["message"]
    return None


def serving_node(pods: list[dict]) -> str | None:
    """A node where one of the serving pods (not being deleted) runs."""
    return next((p["spec"]["nodeName"] for p in pods
                 if (p.get("spec") or {}).get("nodeName") and not p["metadata"].get("deletionTimestamp")), None)


def serving_pod_news(pod: dict) -> tuple:
    """All that the operator reads of a serving pod (`Facts.of`, `observe.volume_readers`, the
    autoscaler's count of pods), as one comparable value: a change of the pod that leaves it
    the same is no news to reconcile. Most of a rollout's are such: a pod started, turned
    Ready (its Deployment's status says that, and is watched too). The test compares it with
    what those readers make of thousands of changed pods (tests/unit/test_pod_news.py)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    notes, phase = meta.get("annotations") or {}, status.get("phase")
    claims = sorted(str((v.get("persistentVolumeClaim") or {}).get("claimName")) for v in spec.get("volumes") or [])
    return (meta.get("name"), meta.get("uid"), bool(meta.get("deletionTimestamp")),
            sorted((meta.get("labels") or {}).items()), notes.get(REPO), notes.get(REVISION), spec.get("nodeName"),
            claims, phase if phase in ("Succeeded", "Failed") else None,
            pod_problems([pod], limit=1 << 30), crash_looping([pod]), unschedulable([pod]))


def _served(deployment: dict | None) -> Served:
    notes = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
    return Served(notes.get(REPO), notes.get(REVISION), int(notes.get(WEIGHTS_BYTES, 0)))


def _rollout(deployment: dict | None) -> Rollout:
    if deployment is None:
        return Rollout()
    status = deployment.get("status") or {}
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    return Rollout(True, int(status.get("replicas") or 0), int(status.get("readyReplicas") or 0),
                   int(status.get("updatedReplicas") or 0), int(status.get("observedGeneration") or 0) >= generation)


def _volume(pvc: dict | None, uid: str | None) -> Volume:
    if pvc is None:
        return Volume()
    meta = pvc.get("metadata") or {}
    ledger = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(SNAPSHOT_PREFIX)}
    request = ((pvc.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", "0")
    return Volume(True, request, meta.get("uid"), owned_by(pvc, uid), ledger)


def _job(job: dict, uid: str | None) -> JobFacts:
    state, why = job_state(job)
    kept = ((job["metadata"].get("annotations") or {}).get(KEEP) or "").split(",")
    return JobFacts(job["metadata"]["name"], state, why, owned_by(job, uid), job, frozenset(filter(None, kept)))


@dataclass(frozen=True)
class Facts:
    served: Served
    rollout: Rollout
    volume: Volume
    downloads: dict[str, JobFacts]  # by name
    collections: list[JobFacts]
    serving_node: str | None  # a node where one of its serving pods (not terminating) runs
    problems: list[str]  # why serving pods are not ready
    unschedulable: str | None = None  # the scheduler cannot place a pod for want of room: its message
    crash_looping: bool = False  # a serving container is in CrashLoopBackOff

    @classmethod
    def of(cls, md: ModelDeployment, observed: Observed) -> "Facts":
        uid = md.metadata.get("uid")
        return cls(_served(observed.deployment), _rollout(observed.deployment), _volume(observed.pvc, uid),
                   {j["metadata"]["name"]: _job(j, uid) for j in observed.jobs},
                   [_job(j, uid) for j in observed.collect_jobs], serving_node(observed.pods), pod_problems(observed.pods),
                   unschedulable(observed.pods), crash_looping(observed.pods))

    def running_download(self) -> bool:
        return any(j.state == "Running" for j in self.downloads.values())

    def running_collection(self) -> JobFacts | None:
        return next((j for j in self.collections if j.state == "Running"), None)

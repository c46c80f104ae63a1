"""The data the reconcile loop passes between its steps: what was observed, what the plan
decided (actions, events, the new status), and the two kinds of error a plan reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SpecError(Exception):
    """The spec was admitted but cannot work with this operator's configuration (permanent)."""

    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass
class ResolveError(Exception):
    """The model cannot be resolved on the Hub; `transient`: worth asking again later."""

    reason: str
    message: str
    transient: bool = False

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass
class Observed:
    """The children as the API server last showed them (None: absent), and what the operator
    made of them (`observe.observe()`)."""

    pvc: dict | None = None
    jobs: list[dict] = field(default_factory=list)  # this ModelDeployment's download Jobs
    deployment: dict | None = None
    service: dict | None = None
    pods: list[dict] = field(default_factory=list)  # its serving pods
    conflicts: list[str] = field(default_factory=list)  # "Service x": ours by name, not by owner
    download_progress: dict = field(default_factory=dict)  # Job name -> its last progress line
    download_errors: dict = field(default_factory=dict)  # Job name -> its last failed pod's message
    shared_bytes: int = 0  # other ModelDeployments' distinct repo@sha on the shared cache volume
    collect_jobs: list[dict] = field(default_factory=list)  # Jobs collecting unused snapshots on the volume
    # "repo@sha" that something else on the volume uses: other ModelDeployments' resolved
    # revisions and what every pod mounting it serves (None: cannot tell, so collect nothing)
    volume_in_use: set[str] | None = None
    volume_node: str | None = None  # a node where a pod mounting the volume runs (where RWO is attached)


@dataclass
class Action:
    verb: Literal["apply", "delete", "annotate"]  # annotate: merge-patch these annotations (None removes)
    kind: str
    name: str
    body: dict | None = None
    exists: bool = False  # the object exists now: "Updated" rather than "Created"
    field_manager: str | None = None  # a ModelDeployment's own share of a co-owned object

    def past_tense(self) -> str:
        if self.verb == "annotate":
            return "Annotated"
        return "Deleted" if self.verb == "delete" else ("Updated" if self.exists else "Created")


@dataclass
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Plan:
    actions: list[Action]  # in the order they are to be executed
    status: dict  # the whole new status
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    download_job: str | None = None  # the download Job in flight after this plan (running, or made now)
    failed_job: str | None = None  # a failed download Job it waits for someone to delete (not in flight)


@dataclass
class JobPods:
    """A running download Job's pods, and the last lines its newest started pod logged."""

    pods: list[dict] = field(default_factory=list)
    log: str = ""


@dataclass
class Reads:
    """What the API layer read for one ModelDeployment, as the API server sent it; nothing
    decided yet (`observe.observe()` does that)."""

    pvc: dict | None = None  # the claim of its volume, whoever owns it
    deployment: dict | None = None  # the objects named like it, whoever owns them
    service: dict | None = None
    jobs: list[dict] = field(default_factory=list)  # its volume Jobs (on the shared cache: every one of it)
    server_pods: list[dict] = field(default_factory=list)  # serving pods that may mount its volume
    neighbours: list[dict] = field(default_factory=list)  # on the shared cache: the namespace's ModelDeployments
    job_pods: dict[str, JobPods] = field(default_factory=dict)  # running download Job name -> its pods

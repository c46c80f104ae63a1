"""The one writer of a ModelDeployment's status and its conditions.

Conditions follow the Kubernetes convention: `lastTransitionTime` moves only when a
condition's `status` flips; reasons are one CamelCase word; messages say what to do. The
`Ready` condition turning True, or turning into a failure, is also an Event, once. Everything
the operator writes into `status` passes through here: the plan's outcome, "resolving" before
a slow resolution, a re-check of a followed branch that failed, a child the API server
refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Condition, ModelDeployment, ResolvedModel
from ..manifests import selector_string, service_url
from ..units import human_bytes
from .facts import Facts
from .types import Action, Event, Plan, ResolveError, SpecError

if TYPE_CHECKING:
    from .autoscaler import View


def set_condition(conditions: list[dict], type_: str, status: str, reason: str, message: str,
                  generation: int, now: str) -> None:
    """Set one condition in place; lastTransitionTime moves only when `status` flips."""
    old = next((c for c in conditions if c["type"] == type_), None)
    since = old["lastTransitionTime"] if old and old["status"] == status else now
    new = Condition(type=type_, status=status, reason=reason, message=message, observed_generation=generation,
                    last_transition_time=since).wire()
    if old:
        conditions[conditions.index(old)] = new
    else:
        conditions.append(new)


def progress(conditions: list[dict], phase: str, generation: int, now: str) -> None:
    """kstatus' conventions (what Flux, kpt and cli-utils read of a custom resource):
    `Reconciling` True while the operator works towards the spec, `Stalled` True when it cannot
    get there without a change (phase Failed); both with the `Ready` condition's reason and
    message, so that a tool reading only them says what `Ready` says."""
    ready = next((c for c in conditions if c["type"] == "Ready"), None)
    reason, message = (ready["reason"], ready["message"]) if ready else (phase, "")
    if phase == "Failed":
        set_condition(conditions, "Stalled", "True", reason, message, generation, now)
        set_condition(conditions, "Reconciling", "False", "Stalled", "the operator cannot go on without a change "
                                                                     "(see Stalled)", generation, now)
    elif phase == "Ready":
        set_condition(conditions, "Stalled", "False", "Ready", "", generation, now)
        set_condition(conditions, "Reconciling", "False", "Ready", message, generation, now)
    else:
        set_condition(conditions, "Stalled", "False", "Progressing", "", generation, now)
        set_condition(conditions, "Reconciling", "True", reason, message or phase, generation, now)


def resolving(md: ModelDeployment, endpoint: str, now: str) -> dict:
    """The status to show while the Hub is asked (resolution may take a while)."""
    status = md.status.wire()
    conditions = [c.wire() for c in md.status.conditions]
    set_condition(conditions, "Resolved", "Unknown", "Resolving",
                  f"asking {endpoint} for {md.spec.model.repo}@{md.spec.model.revision}", md.generation, now)
    set_condition(conditions, "Stalled", "False", "Progressing", "", md.generation, now)
    set_condition(conditions, "Reconciling", "True", "Resolving",
                  f"asking {endpoint} for {md.spec.model.repo}@{md.spec.model.revision}", md.generation, now)
    status.update(phase="Resolving", conditions=conditions)
    return status


def rejected(md: ModelDeployment, plan: Plan, message: str, now: str) -> None:
    """A child the operator built was refused (a spec the CRD admits but the API server does
    not, a quota, a StorageClass that cannot grow): say so; no retry until a change."""
    message += "; fix the ModelDeployment (or the cluster's policy) and the operator tries again"
    set_condition(plan.status["conditions"], "Ready", "False", "ApplyRejected", message, md.generation, now)
    plan.status["phase"] = "Failed"
    progress(plan.status["conditions"], "Failed", md.generation, now)
    plan.requeue_after = None
    before = next((c for c in md.status.conditions if c.type == "Ready"), None)
    if not (before and before.reason == "ApplyRejected" and before.message == message):
        plan.events.append(Event("Warning", "ApplyRejected", message))  # once, not at every resync


class StatusWriter:
    """The new status of one ModelDeployment, built by one plan."""

    def __init__(self, md: ModelDeployment, facts: Facts, now: str, scale: "View | None" = None):
        self.md, self.facts, self.now, self.scale = md, facts, now, scale
        self.conditions = [c.wire() for c in md.status.conditions if scale or c.type != "Autoscaled"]
        self.fields: dict = {"observedGeneration": md.generation, "selector": selector_string(md)}
        before = md.status.wire()
        for key in ("resolved", "download", "endpoint"):
            if key in before:
                self.fields[key] = before[key]
        if scale is not None:  # (autoscaling off: its status and condition go)
            self.fields["autoscaling"] = scale.status
            self.set("Autoscaled", *scale.condition)

    def set(self, type_: str, status: str, reason: str, message: str) -> None:
        set_condition(self.conditions, type_, status, reason, message, self.md.generation, self.now)

    def add_to_message(self, type_: str, text: str) -> None:
        next(c for c in self.conditions if c["type"] == type_)["message"] += text

    def resolved(self, resolved: ResolvedModel, follow_failure: str | None) -> None:
        self.fields["resolved"] = resolved.wire()
        what = f"{len(resolved.files)} files, {human_bytes(resolved.total_bytes)}, served by {resolved.engine}"
        if follow_failure:  # a re-check of a followed branch failed: the pinned commit keeps serving
            self.set("Resolved", "True", "FollowCheckFailed",
                     f"still serving {resolved.sha[:7]}; asking the Hub whether {resolved.revision} moved failed "
                     f"({follow_failure}); retrying")
        elif resolved.moved_from:
            self.set("Resolved", "True", "RevisionMoved", f"{resolved.revision} moved from {resolved.moved_from[:7]} "
                                                          f"to {resolved.sha[:7]} (revisionPolicy Follow): {what}")
        else:
            self.set("Resolved", "True", "Resolved",
                     f"{resolved.repo}@{resolved.revision} is commit {resolved.sha}: {what}")

    def endpoint(self) -> None:
        url = service_url(self.md)
        self.fields["endpoint"] = {"url": url, "openAIBaseURL": url + "/v1", "model": self.md.name}

    def download(self, progress: dict) -> None:
        self.fields["download"] = progress

    def available(self, downloaded: bool | None, creating: bool = False) -> None:
        """Available: from what runs now (an older revision may still serve). `creating`: this
        reconcile makes the Deployment, so the status written after it says what comes next
        (no second status write, and no reconcile, only to say the Deployment now exists)."""
        rollout = self.facts.rollout
        if not rollout.exists and not creating:
            reason = "WaitingForDownload" if downloaded is False else "NotCreated"
            self.set("Available", "False", reason, "no serving replica yet")
        elif rollout.ready > 0:
            self.set("Available", "True", "ReplicasAvailable", f"{rollout.ready} replica(s) ready")
        elif (self.scale.replicas if self.scale else self.md.spec.replicas) == 0:
            self.set("Available", "False", "ScaledToZero", "scaled to zero: nothing serves; the weights are kept")
        else:
            problems = self.facts.problems
            self.set("Available", "False", "NoReplicaReady",
                     "; ".join(problems) if problems else "waiting for the engine to load the model and pass its probes")

    def stopped(self, error: ResolveError | SpecError) -> Plan:
        """Resolution or placement failed: say so; nothing that runs is changed."""
        transient = isinstance(error, ResolveError) and error.transient
        if isinstance(error, ResolveError):
            self.set("Resolved", "False", error.reason, error.message)
        self.set("Ready", "False", error.reason, error.message)
        self.available(downloaded=None)
        return self.finish("Resolving" if transient else "Failed", [], [], 30.0 if transient else None)

    def blocked(self, reason: str, message: str, phase: str, actions: list[Action], requeue: float | None) -> Plan:
        """The weights cannot be had: say why (what does not depend on them is still applied)."""
        self.set("Downloaded", "False", reason, message)
        self.set("Ready", "False", reason, message)
        self.available(downloaded=False)
        return self.finish(phase, actions, [], requeue)

    def finish(self, phase: str, actions: list[Action], events: list[Event], requeue: float | None) -> Plan:
        rollout = self.facts.rollout
        progress(self.conditions, phase, self.md.generation, self.now)
        status = {**self.fields, "phase": phase, "conditions": self.conditions,
                  "replicas": rollout.replicas, "readyReplicas": rollout.ready}
        return Plan(actions, status, [*events, *self._ready_events(phase)], requeue)

    def _ready_events(self, phase: str) -> list[Event]:
        """`Ready` turning True, or turning into a failure."""
        before = {c.type: (c.status, c.reason) for c in self.md.status.conditions}
        ready = next((c for c in self.conditions if c["type"] == "Ready"), None)
        if ready is None or before.get("Ready") == (ready["status"], ready["reason"]):
            return []
        failed = phase == "Failed"
        if ready["status"] == "True" or failed:
            return [Event("Warning" if failed else "Normal", ready["reason"], ready["message"])]
        return []


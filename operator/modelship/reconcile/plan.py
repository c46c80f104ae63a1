"""The decisions: a function from (desired, observed) to (actions, status).

`plan()` never talks to the API server. Its one effect is on the download window it is given
(`window.py`): a new download Job takes a place in it, or its ModelDeployment waits in line.
It takes the ModelDeployment, the outcome of resolution, the children the operator observed
and the settings, parses the children into facts once, and decides in stages, each over
those facts (what to apply of each child, and what is drift, is `apply.py`'s):

1. the Service, which does not depend on the weights;
2. the volume: created unless the user brought one; grown, never shrunk;
3. the download (`download.py`): one Job per (revision, files, volume); stale ones go; a
   finished one is remembered while its files can still be there;
4. serving: the Deployment, once the weights are there (until then an older revision's
   Deployment keeps serving);
5. collection: snapshots nothing uses any more leave a volume the operator made.

The plan's actions are executed in that order, each stage's in the order it lists them (the
volume's ledger names a snapshot before the Job that puts it there); the Service's, which
depend on nothing, in the background (`Controller._execute`). The status, conditions
included, is written by one `StatusWriter`. The controller executes the plan; the unit tests
call `plan()` directly.
"""

from __future__ import annotations

from .. import manifests
from ..api import ModelDeployment, ResolvedModel
from ..manifests import Placement
from ..settings import Settings
from ..units import quantity_bytes
from .apply import apply_if_needed, needs_apply
from .autoscaler import View
from .download import download_stage
from .facts import Facts
from .policy import check_ownership, check_settings, check_storage, place
from .status import StatusWriter
from .types import Action, Event, Observed, Plan, ResolveError, SpecError
from .window import DownloadWindow


def plan(md: ModelDeployment, resolution: ResolvedModel | ResolveError | SpecError, observed: Observed,
         settings: Settings, now: str, endpoint: str, follow_failure: str | None = None,
         scale: View | None = None, window: DownloadWindow | None = None) -> Plan:
    """`follow_failure`: why asking the Hub whether a followed branch moved failed (the
    resolution is then the commit served so far). `scale`: the autoscaler's replicas and
    status, with autoscaling on. `window`: the downloads in flight in the cluster, asked for a
    place before a new download Job is made (None: no bound)."""
    facts = Facts.of(md, observed)
    status = StatusWriter(md, facts, now, scale)
    if isinstance(resolution, (SpecError, ResolveError)):
        return status.stopped(resolution)
    resolved = resolution
    status.resolved(resolved, follow_failure)
    try:
        placement = place(md, resolved.engine, settings)
        check_settings(md, resolved.engine)
        check_storage(md, resolved)
        check_ownership(observed.conflicts)
    except SpecError as e:
        return status.stopped(e)
    status.endpoint()
    actions = apply_if_needed(manifests.service(md), observed.service)
    claim = md.spec.storage.existing_claim
    if claim and not facts.volume.exists:
        return status.blocked("ClaimNotFound", f"storage.existingClaim {claim!r} does not exist in namespace "
                                               f"{md.namespace}: create it, or remove existingClaim to let the "
                                               f"operator create a volume", "Pending", actions, 15.0)
    actions += volume_stage(md, resolved, observed, facts, settings)
    download = download_stage(md, resolved, facts, observed, settings, endpoint, now, window)
    status.download(download.progress)
    if download.blocked:
        p = status.blocked(download.reason, download.message, "Failed", actions + download.actions, download.requeue)
        p.failed_job = download.failed
        return p
    status.set("Downloaded", download.condition, download.reason, download.message + volume_note(md, facts))
    actions += download.actions
    if not download.done:
        status.available(downloaded=False)
        status.set("Ready", "False", download.reason if download.queued else "Downloading", download.message)
        # A running Job's log is read for progress; one in line is woken when its turn comes
        # (and looks again in a minute all the same).
        p = status.finish("Downloading", actions, [], 60.0 if download.queued else 3.0)
        p.download_job = download.in_flight
        return p
    return serving_stage(md, resolved, placement, observed, facts, settings, status, actions, scale)


# --- 2. the volume ---------------------------------------------------------------------------


def volume_stage(md: ModelDeployment, resolved: ResolvedModel, observed: Observed, facts: Facts,
                 settings: Settings) -> list[Action]:
    storage = md.spec.storage
    if storage.existing_claim:  # the user's, and there: used as it is
        return []
    # While a new revision downloads next to the one being served, the volume holds both;
    # the shared cache holds every repo@sha of the ModelDeployments that use it.
    total = resolved.total_bytes
    if facts.served.sha is not None and facts.served.sha != resolved.sha:
        total += facts.served.weights_bytes
    want = manifests.pvc(md, resolved, settings,
                         total_bytes=total + (observed.shared_bytes if storage.shared_cache else 0))
    if not facts.volume.exists:
        return apply_if_needed(want, None)
    requests = want["spec"]["resources"]["requests"]
    if quantity_bytes(requests["storage"]) <= quantity_bytes(facts.volume.request) and facts.volume.joined:
        return []
    if storage.shared_cache and not facts.volume.joined:  # join as an owner; never shrink what others need
        requests["storage"] = max(requests["storage"], facts.volume.request, key=quantity_bytes)
    return apply_if_needed(want, observed.pvc)


def volume_note(md: ModelDeployment, facts: Facts) -> str:
    """A volume is never shrunk (Kubernetes cannot): a storage.size below it is said, not ignored."""
    size = md.spec.storage.size
    if size is None or md.spec.storage.existing_claim or not facts.volume.exists:
        return ""
    if quantity_bytes(size) >= quantity_bytes(facts.volume.request):
        return ""
    return (f"; storage.size {size} is below the volume's {facts.volume.request}, and a volume cannot shrink: it "
            f"stays at {facts.volume.request} (delete the ModelDeployment to start with a smaller one)")


# --- 4. serving, and 5. collection -----------------------------------------------------------


def serving_stage(md: ModelDeployment, resolved: ResolvedModel, placement: Placement, observed: Observed,
                  facts: Facts, settings: Settings, status: StatusWriter, actions: list[Action],
                  scale: View | None = None) -> Plan:
    """The weights are there: the Deployment, the collection, and whether it is Ready. With
    autoscaling on, the replicas are the autoscaler's."""
    want = scale.replicas if scale else md.spec.replicas
    dep = manifests.deployment(md, resolved, placement, settings, replicas=want)
    rolling = needs_apply(dep, observed.deployment)
    actions += apply_if_needed(dep, observed.deployment)
    events: list[Event] = []
    if not md.spec.storage.existing_claim and facts.volume.exists:  # a volume the operator made is collected
        more, events, failed = collection_stage(md, resolved, observed, facts, settings)
        actions += more
        if failed:
            status.add_to_message("Downloaded", failed)
    status.available(downloaded=True, creating=observed.deployment is None)
    rollout = facts.rollout
    settled = not rolling and rollout.exists and rollout.settled
    note = scale.note if scale else ""
    if want == 0 and settled:
        if scale:
            status.set("Ready", "True", "ScaledToZero", f"scaled to zero by the autoscaler ({scale.status['reason']}): "
                                                        f"nothing serves; the next request wakes it")
        else:
            status.set("Ready", "True", "ScaledToZero", "replicas is 0: nothing serves; scale up to serve again")
        return status.finish("Ready", actions, events, None)
    if settled and rollout.ready >= want and rollout.updated >= want:
        status.set("Ready", "True", "Ready", f"{rollout.ready}/{want} replicas ready")
        return status.finish("Ready", actions, events, None)
    if scale and want > 0 and rollout.ready > 0 and not _template_changed(dep, observed.deployment):
        # Autoscaled: serving while the replicas move is Ready (it is not a rollout).
        status.set("Ready", "True", "Ready", f"{rollout.ready}/{want} replicas ready; scaling "
                                             f"{'up' if rollout.replicas <= want else 'down'}{note}")
        return status.finish("Ready", actions, events, 15.0)
    detail = ("; " + "; ".join(facts.problems)) if facts.problems else ""
    # Crashing pods: a reason of their own whatever else is going on (waking, rolling out), for
    # tools that read reasons, not messages (Argo CD's Lua has no string library to search with).
    crash = "CrashLoopBackOff" if facts.crash_looping else None
    if scale and rollout.ready == 0 and want > 0 and scale.status["reason"] in ("Woken", "WaitingForRoom", "Placed"):
        status.set("Ready", "False", crash or "Waking", f"waking from zero: {rollout.replicas}/{want} replicas started, none "
                                               f"ready yet{detail}{note}")
        return status.finish("Starting", actions, events, 15.0)
    if rolling or not settled or rollout.updated < want:
        status.set("Ready", "False", crash or "RollingOut", f"rolling out the serving pods: {rollout.updated}/{want} updated, "
                                                   f"{rollout.ready} ready{detail}{note}")
        return status.finish("Starting", actions, events, 15.0)
    status.set("Ready", "False", crash or "ReplicasNotReady",
               f"{rollout.ready}/{want} replicas ready{detail}{note}")
    return status.finish("Degraded" if rollout.ready > 0 else "Starting", actions, events, 15.0)


def _template_changed(desired: dict, observed: dict | None) -> bool:
    """Whether the pods' template differs (a rollout), rather than only the replicas."""
    if observed is None:
        return True
    have = ((observed.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}
    return have.get(manifests.SPEC_HASH) != desired["spec"]["template"]["metadata"]["annotations"][manifests.SPEC_HASH]


def collection_stage(md: ModelDeployment, resolved: ResolvedModel, observed: Observed, facts: Facts,
                     settings: Settings) -> tuple[list[Action], list[Event], str]:
    """Collect the snapshots of the volume that nothing uses any more: once no download runs
    on it, with one Job that keeps everything in use. Returns the actions, the events, and
    what to add to the Downloaded message when a collection failed."""
    actions: list[Action] = []
    events: list[Event] = []
    if observed.volume_in_use is None or facts.running_download():
        return actions, events, ""  # cannot tell what is in use, or a download is running: later
    in_use = set(observed.volume_in_use) | {manifests.snapshot_key(resolved.repo, resolved.sha)}
    if facts.served.key():
        in_use.add(facts.served.key())
    claim, ledger = manifests.claim_name(md), dict(facts.volume.ledger)
    failed = ""
    for job in facts.collections:
        if job.state == "Running":
            return actions, events, ""
        if job.state == "Failed":
            failed = (f"; removing unused snapshots from the volume failed (Job {job.name}: {job.why}): see "
                      f"`kubectl logs job/{job.name}`, then delete the Job to try again")
            continue
        gone = {k: None for k, v in ledger.items() if v not in job.keep and v not in in_use}
        if gone:
            actions.append(Action("annotate", "PersistentVolumeClaim", claim, gone, exists=True))
            events.append(Event("Normal", "Collected", f"removed {', '.join(sorted(ledger[k] for k in gone))} from "
                                                       f"volume {claim}: nothing uses it any more"))
            for k in gone:
                ledger.pop(k)
        actions.append(Action("delete", "Job", job.name, exists=True))
    if set(ledger.values()) - in_use and not failed:
        job = manifests.collect_job(md, settings, sorted(in_use), pin_node=_collection_node(md, observed, facts))
        if not any(j.name == job["metadata"]["name"] for j in facts.collections):
            actions += apply_if_needed(job, None)
    return actions, events, failed


def _collection_node(md: ModelDeployment, observed: Observed, facts: Facts) -> str | None:
    """A ReadWriteOnce volume is collected on the node where it is attached."""
    if md.spec.storage.access_mode != "ReadWriteOnce":
        return None
    return observed.volume_node if manifests.on_shared_cache(md) else facts.serving_node

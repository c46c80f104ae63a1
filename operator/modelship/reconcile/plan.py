"""The decisions: a function from (desired, observed) to (actions, status).

`plan()` never talks to the API server. Its one effect is on the download window it is given
(`window.py`): a new download Job takes a place in it, or its ModelDeployment waits in line.
It takes the ModelDeployment, the outcome of resolution, the children the operator observed
and the settings, parses the children into facts once, and decides in stages, each over
those facts:

1. the Service, which does not depend on the weights;
2. the volume: created unless the user brought one; grown, never shrunk;
3. the download: one Job per (revision, files, volume); stale ones go; a finished one is
   remembered while its files can still be there;
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

from dataclasses import dataclass, field

from .. import clock, manifests
from ..api import DownloadStatus, ModelDeployment, ResolvedModel
from ..manifests import APPLIED_HASH, Placement
from ..settings import Settings
from ..units import human_bytes, quantity_bytes
from .autoscaler import View
from .facts import Facts, JobFacts
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
        return status.blocked(download.reason, download.message, "Failed", actions + download.actions,
                              download.requeue)
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


# --- what to apply ---------------------------------------------------------------------------


def contains(observed: object, desired: object) -> bool:
    """Whether everything `desired` says is in `observed` (which also holds the API server's
    defaults and other managers' fields)."""
    if isinstance(desired, dict):
        return isinstance(observed, dict) and all(k in observed and contains(observed[k], v)
                                                  for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(observed, list) and len(observed) == len(desired)
                and all(contains(o, d) for o, d in zip(observed, desired)))
    return observed == desired or str(observed) == str(desired)


def needs_apply(desired: dict, observed: dict | None) -> bool:
    """Absent, built from another spec (the applied hash), or changed by hand since (drift)."""
    if observed is None:
        return True
    have = (observed.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH)
    if have != desired["metadata"]["annotations"][APPLIED_HASH]:
        return True
    return not contains(observed.get("spec"), desired.get("spec"))


def apply_if_needed(body: dict, seen: dict | None) -> list[Action]:
    """Apply `body` unless `seen` (the object as observed) is it already. A co-owned object is
    applied with this ModelDeployment's own field manager, so every owner keeps its share."""
    if not needs_apply(body, seen):
        return []
    refs = body["metadata"].get("ownerReferences") or [{}]
    manager = None if refs[0].get("controller", True) else manifests.field_manager_of(refs[0], body)
    return [Action("apply", body["kind"], body["metadata"]["name"], body, exists=seen is not None,
                   field_manager=manager)]


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


# --- 3. the download -------------------------------------------------------------------------


@dataclass
class Download:
    state: str  # Running, Complete, Failed, Refill, or Absent (waiting for a collection)
    condition: str  # the Downloaded condition it gives: its status (True once Complete), reason and message
    reason: str
    message: str
    progress: dict  # status.download
    actions: list[Action] = field(default_factory=list)
    requeue: float | None = None  # when to look again (a full volume: when its Job is tried again)
    in_flight: str | None = None  # the download Job running, or made now

    @property
    def queued(self) -> bool:
        return self.state == "Queued"

    @property
    def done(self) -> bool:
        return self.state == "Complete"

    @property
    def blocked(self) -> bool:
        return self.state == "Failed"


def _download_state(md: ModelDeployment, job: str, current: JobFacts | None, facts: Facts,
                    key: str) -> tuple[str, str, str | None]:
    """(state, why it failed, why the files must come again)."""
    state, why = (current.state, current.why) if current else ("Absent", "")
    before = md.status.download
    if (current is None and before and before.completed_job == job
            and before.volume_uid in (None, facts.volume.uid)):
        state = "Complete"  # verified earlier on this very volume; the Job has been cleaned up since
    # A finished download counts only while its files can still be there: the ledger of a
    # volume the operator made still names them (a collection has not removed them), and
    # the claim is the one it filled (not deleted and made again since).
    if state != "Complete" or not facts.volume.exists:
        return state, why, None
    if not md.spec.storage.existing_claim and not facts.volume.holds(key):
        return "Refill", why, "they were removed from it (or it is a new claim)"
    if before and before.volume_uid and facts.volume.uid and before.volume_uid != facts.volume.uid:
        return "Refill", why, "the claim was deleted and made again"
    return state, why, None


def _progress(md: ModelDeployment, resolved: ResolvedModel, job: str, state: str, live: dict,
              volume_uid: str | None) -> dict:
    """status.download: bytes on the volume so far (never fewer than last said), the ETA."""
    total = resolved.total_bytes
    before: DownloadStatus | None = md.status.download if md.status.download and md.status.download.job == job \
        else None
    done = total if state == "Complete" else min(max(int(live.get("done") or 0), before.bytes_done if before else 0),
                                                 total)
    out = {"job": job, "bytesDone": done, "bytesTotal": total,
           "percent": 100 if total == 0 or done >= total else int(100 * done / total)}
    if state == "Running" and live.get("eta"):
        out["etaSeconds"] = int(live["eta"])
    if state == "Complete":
        out["completedJob"] = job
        if volume_uid:
            out["volumeUID"] = volume_uid
    return out


# Seconds a download Job that found the volume full stays failed (its status to read) before it
# is deleted and made again: the next one resumes from the bytes already there, once the
# claim was grown or space freed. Each Job fails at once on a full volume (its podFailurePolicy).
VOLUME_FULL_RETRY = 30.0


def volume_full(current: JobFacts | None, now: str, name: str, claim: str, said: str | None,
                progress: dict) -> Download | None:
    """A download Job that failed on a full volume: VolumeFull, and the Job deleted (to be
    made again) once it has been failed for VOLUME_FULL_RETRY seconds."""
    if current is None or not (current.why.startswith("PodFailurePolicy")
                               and f"exit code {manifests.VOLUME_FULL_EXIT} " in current.why + " "):
        return None
    failed = next((c.get("lastTransitionTime") for c in (current.body.get("status") or {}).get("conditions") or []
                   if c.get("type") == "Failed" and c.get("status") == "True"), None) or now
    left = VOLUME_FULL_RETRY - (clock.parse(now) - clock.parse(failed)).total_seconds()
    actions = [Action("delete", "Job", name, exists=True)] if left <= 0 else []
    # the pod's own line (bytes written and free), unless only its exit code is known
    detail = f" ({said.removeprefix('Error: ')})" if said and "(exit code " not in said else ""
    return Download("Failed", "False", "VolumeFull", f"volume {claim} is full: download Job {name} stopped{detail}"
                    "; grow the claim (spec.storage.size, or the existing claim) or free space on it: the download is "
                    f"tried again every {VOLUME_FULL_RETRY:.0f} s and resumes from the bytes already there", progress,
                    actions,
                    max(left, 1.0))


def download_stage(md: ModelDeployment, resolved: ResolvedModel, facts: Facts, observed: Observed,
                   settings: Settings, endpoint: str, now: str, window: DownloadWindow | None = None) -> Download:
    cache, claim = manifests.on_shared_cache(md), manifests.claim_name(md)
    pin = facts.serving_node if md.spec.storage.access_mode == "ReadWriteOnce" and not cache else None
    serving = facts.served.key() if facts.served.repo and facts.served.sha != resolved.sha else None
    job = manifests.download_job(md, resolved, endpoint, settings, pin_node=pin, serving=serving)
    name, key = job["metadata"]["name"], manifests.snapshot_key(resolved.repo, resolved.sha)
    current = facts.downloads.get(name)
    # Stale Jobs go (on the shared cache they go with their last owner).
    actions = [] if cache else [Action("delete", "Job", n, exists=True) for n in facts.downloads if n != name]
    state, why, refill = _download_state(md, name, current, facts, key)
    progress = _progress(md, resolved, name, state, observed.download_progress.get(name) or {}, facts.volume.uid)
    said = observed.download_errors.get(name)
    if state == "Failed" and (full := volume_full(current, now, name, claim, said, progress)):
        return full
    if state == "Failed":
        return Download(state, "False", "DownloadFailed", f"download Job {name} failed ({why})" + (f": {said}" if said else "")
                        + f"; see `kubectl logs job/{name}`, fix the cause, then delete the Job to retry",
                        progress, actions)
    if not md.spec.storage.existing_claim and not facts.volume.holds(key):
        # The volume's ledger names the snapshot before the Job that puts it there runs.
        actions.insert(0, Action("annotate", "PersistentVolumeClaim", claim,
                                 {manifests.ledger_annotation(key): key}, exists=True))
    if state == "Complete":
        return Download(state, "True", "Downloaded", f"{human_bytes(resolved.total_bytes)} of {resolved.repo}@"
                        f"{resolved.short_sha or resolved.sha[:7]} are on volume {claim}", progress, actions)
    if refill:
        if current is not None:  # its name is the download's: it must go before the download runs again
            actions.append(Action("delete", "Job", name, exists=True))
        elif not _place(md, name, window):
            return _queued(md, name, window, progress, actions)
        else:
            actions += apply_if_needed(job, None)
        return Download(state, "False", "Downloading", f"the files of {resolved.repo}@{resolved.sha[:7]} are no longer on "
                        f"volume {claim}: {refill}; downloading them again", progress, actions,
                        in_flight=None if current is not None else name)
    collecting = facts.running_collection()
    if current is None and collecting is not None:  # downloads wait for the collection, and it for them
        return Download("Absent", "False", "WaitingForCollection", f"waiting for Job {collecting.name}, which removes "
                        f"snapshots nothing uses any more from volume {claim}, to finish before downloading",
                        progress, actions)
    if current is None:  # a Job's pod template is immutable; its name already fingerprints it
        if not _place(md, name, window):
            return _queued(md, name, window, progress, actions)
        actions += apply_if_needed(job, None)
    elif cache and not current.owned:  # another ModelDeployment's download of the same files: join it
        if "podFailurePolicy" not in current.body.get("spec", {}):  # made by an older operator: the field
            job["spec"].pop("podFailurePolicy", None)  # cannot be added to a Job that exists (422)
        actions += apply_if_needed(job, current.body)
    eta = f", about {progress['etaSeconds']} s left" if "etaSeconds" in progress else ""
    return Download(state, "False", "Downloading", f"downloading {len(resolved.files)} files with Job {name}: "
                    f"{human_bytes(progress['bytesDone'])} of {human_bytes(resolved.total_bytes)} "
                    f"({progress['percent']}%){eta}" + (f"; last attempt: {said}" if said else ""), progress, actions,
                    in_flight=name)


def _place(md: ModelDeployment, job: str, window: DownloadWindow | None) -> bool:
    return window is None or window.take((md.namespace, md.name), job)


def _queued(md: ModelDeployment, job: str, window: DownloadWindow, progress: dict, actions: list[Action]) -> Download:
    return Download("Queued", "False", "DownloadQueued", f"waiting to download: {window.size} downloads run at once "
                    f"in the cluster (the operator's maxConcurrentDownloads), and Job {job} starts when one of them "
                    "ends", progress, actions)


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
    status.available(downloaded=True)
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

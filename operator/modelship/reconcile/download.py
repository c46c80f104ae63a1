"""Stage 3 of the plan (`plan.py`): the download.

One Job per (revision, files, volume); stale ones go; a finished one is remembered while its
files can still be there (the volume's ledger names them, and the claim is the one it filled);
a Job that found the volume full is made again every VOLUME_FULL_RETRY seconds; a new Job takes
a place in the download window (`window.py`), or its ModelDeployment waits in line.

On a volume several ModelDeployments use (the shared cache, a claim of the user's) they share
the Job that puts one repo@sha there: JOB_OWNERS_MAX of them own it, the others follow it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import clock, manifests
from ..api import DownloadStatus, ModelDeployment, ResolvedModel
from ..settings import Settings
from ..units import human_bytes
from .apply import apply_if_needed
from .facts import Facts, JobFacts
from .types import Action, Observed
from .window import DownloadWindow


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
    failed: str | None = None  # the failed download Job it waits for (deleted to be retried)

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
    actions = delete(current) if left <= 0 else []
    # the pod's own line (bytes written and free), unless only its exit code is known
    detail = f" ({said.removeprefix('Error: ')})" if said and "(exit code " not in said else ""
    return Download("Failed", "False", "VolumeFull", f"volume {claim} is full: download Job {name} stopped{detail}"
                    "; grow the claim (spec.storage.size, or the existing claim) or free space on it: the download is "
                    f"tried again every {VOLUME_FULL_RETRY:.0f} s and resumes from the bytes already there", progress,
                    actions, max(left, 1.0), failed=name)


# A shared download Job is owned by at most this many of the ModelDeployments that wait for it:
# enough that it outlives most deletions among them (the garbage collector deletes it with its
# last owner), few enough that 500 ModelDeployments on one claim do not each add themselves to
# it (an owner reference and a field manager each: a write of a Job that grows every time). The
# others follow it without owning it; the download window knows them and wakes them when it
# changes (`DownloadWindow.followers`). Should every owner go first, the Job goes with them and
# the next reconcile of a follower makes it again: it resumes from the bytes already there.
JOB_OWNERS_MAX = 8


def delete(job: JobFacts) -> list[Action]:
    """Delete this very Job if this ModelDeployment owns it (a follower of a shared Job waits for an
    owner to), and only this Job: not one made again under its name since it was read (by a
    ModelDeployment that shares it), which the API server refuses (the uid precondition)."""
    if not job.owned:
        return []
    return [Action("delete", "Job", job.name, {"uid": job.body.get("metadata", {}).get("uid")}, exists=True)]


def _stale(md: ModelDeployment, name: str, facts: Facts, window: DownloadWindow | None) -> list[Action]:
    """Its Jobs on the volume other than `name`, to delete: on a volume of its own every one;
    on a claim of the user's those it alone owns and no other ModelDeployment waits for; on the
    shared cache none (they go with their last owner, and a collection removes what they put
    there)."""
    if manifests.on_shared_cache(md):
        return []
    stale = [j for n, j in facts.downloads.items() if n != name]
    if md.spec.storage.existing_claim:  # only those no other ModelDeployment owns or waits for
        me = (md.namespace, md.name)
        # (those that wait for it to finish; not those that wait for a failed one to be deleted:
        # they cannot delete it, and its deletion wakes them to make it again)
        stale = [j for j in stale if len(_owners(j)) == 1
                 and not (window is not None and window.followers(md.namespace, j.name, failed=False) - {me})]
    return [a for j in stale for a in delete(j)]


def _owners(job: JobFacts) -> list[dict]:
    return job.body.get("metadata", {}).get("ownerReferences") or []


def download_stage(md: ModelDeployment, resolved: ResolvedModel, facts: Facts, observed: Observed,
                   settings: Settings, endpoint: str, now: str, window: DownloadWindow | None = None) -> Download:
    cache, claim = manifests.on_shared_cache(md), manifests.claim_name(md)
    pin = facts.serving_node if md.spec.storage.access_mode == "ReadWriteOnce" and not cache else None
    serving = facts.served.key() if facts.served.repo and facts.served.sha != resolved.sha else None
    job = manifests.download_job(md, resolved, endpoint, settings, pin_node=pin, serving=serving)
    name, key = job["metadata"]["name"], manifests.snapshot_key(resolved.repo, resolved.sha)
    current = facts.downloads.get(name)
    actions = _stale(md, name, facts, window)
    state, why, refill = _download_state(md, name, current, facts, key)
    progress = _progress(md, resolved, name, state, observed.download_progress.get(name) or {}, facts.volume.uid)
    said = observed.download_errors.get(name)
    if state == "Failed" and (full := volume_full(current, now, name, claim, said, progress)):
        return full
    if state == "Failed":
        return Download(state, "False", "DownloadFailed", f"download Job {name} failed ({why})" + (f": {said}" if said else "")
                        + f"; see `kubectl logs job/{name}`, fix the cause, then delete the Job to retry",
                        progress, actions, failed=name)
    if not md.spec.storage.existing_claim and not facts.volume.holds(key):
        # The volume's ledger names the snapshot before the Job that puts it there runs.
        actions.insert(0, Action("annotate", "PersistentVolumeClaim", claim,
                                 {manifests.ledger_annotation(key): key}, exists=True))
    if state == "Complete":
        return Download(state, "True", "Downloaded", f"{human_bytes(resolved.total_bytes)} of {resolved.repo}@"
                        f"{resolved.short_sha or resolved.sha[:7]} are on volume {claim}", progress, actions)
    if refill:
        if current is not None:  # its name is the download's: it must go before the download runs again
            actions += delete(current)
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
    elif manifests.shares_volume_jobs(md) and not current.owned and len(_owners(current)) < JOB_OWNERS_MAX:
        # another ModelDeployment's download of the same files onto the same volume: join it
        actions.append(_join(job))
    eta = f", about {progress['etaSeconds']} s left" if "etaSeconds" in progress else ""
    return Download(state, "False", "Downloading", f"downloading {len(resolved.files)} files with Job {name}: "
                    f"{human_bytes(progress['bytesDone'])} of {human_bytes(resolved.total_bytes)} "
                    f"({progress['percent']}%){eta}" + (f"; last attempt: {said}" if said else ""), progress, actions,
                    in_flight=name)


def _join(job: dict) -> Action:
    """Add oneself to a Job's owners: an apply of one's owner reference alone, with one's own
    field manager (every owner keeps its share). Nothing else of the Job is applied: a Job's
    template cannot change, and the sharers' may differ (one pinned to the node of a ReadWriteOnce
    volume, one not yet; one made by an older operator, without podFailurePolicy)."""
    meta = job["metadata"]
    body = {"apiVersion": job["apiVersion"], "kind": job["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                         "ownerReferences": meta["ownerReferences"]}}
    return Action("apply", "Job", meta["name"], body, exists=True,
                  field_manager=manifests.field_manager_of(meta["ownerReferences"][0], job))


def _place(md: ModelDeployment, job: str, window: DownloadWindow | None) -> bool:
    return window is None or window.take((md.namespace, md.name), job)


def _queued(md: ModelDeployment, job: str, window: DownloadWindow, progress: dict, actions: list[Action]) -> Download:
    return Download("Queued", "False", "DownloadQueued", f"waiting to download: {window.size} downloads run at once "
                    f"in the cluster (the operator's maxConcurrentDownloads), and Job {job} starts when one of them "
                    "ends", progress, actions)

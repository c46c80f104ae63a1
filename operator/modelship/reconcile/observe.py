"""What the operator makes of what it read: pure functions from the API server's objects to
the observed state (`Observed`) that the plan decides on.

The rules here, each with a unit test: which objects are this ModelDeployment's (owner
references, never names alone) and which are in the way; which Jobs work on its volume; what
else uses the volume (other ModelDeployments on the shared cache, every pod that mounts it)
and where it is attached; and what a download says about itself (its last progress line,
its last failure).
"""

from __future__ import annotations

import json

from ..api import ModelDeployment
from ..manifests import (COMPONENT, DEPLOYMENT_LABEL, REPO, REVISION, SHARED_CACHE, SHARED_CLAIM, on_shared_cache,
                         owned_by, shares_volume_jobs, snapshot_key)
from .types import Observed, Reads

PROGRESS_PREFIX = '{"event"'  # a progress line of `modelship fetch` (a JSON object per line)


def job_state(job: dict | None) -> tuple[str, str]:
    """("Absent" | "Running" | "Complete" | "Failed", why it failed). The one rule for
    whether a Job has finished."""
    if job is None:
        return "Absent", ""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "Complete", ""
        if c.get("status") == "True" and c.get("type") in ("Failed", "FailureTarget"):
            return "Failed", f"{c.get('reason', 'Failed')}: {c.get('message', '')}".strip(": ")
    return "Running", ""


def _component(obj: dict) -> str | None:
    return (obj["metadata"].get("labels") or {}).get(COMPONENT)


def volume_jobs(md: ModelDeployment, jobs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(downloads, collections) on its volume: its own, or on a shared volume (the shared
    cache, a claim of the user's) every one."""
    uid, shared = md.metadata.get("uid"), shares_volume_jobs(md)
    mine = [j for j in jobs if shared or owned_by(j, uid)]
    return ([j for j in mine if _component(j) == "download"], [j for j in mine if _component(j) == "collect"])


def downloads_to_follow(md: ModelDeployment, reads: Reads) -> list[str]:
    """The downloads whose pods are worth reading: those still running, and failed ones (their
    last pod's termination message says why)."""
    return [j["metadata"]["name"] for j in volume_jobs(md, reads.jobs)[0] if job_state(j)[0] in ("Running", "Failed")]


def progress_pod(pods: list[dict]) -> dict | None:
    """The pod whose log tells the download's progress: the newest that started (a finished
    one said "done"). `pods` oldest first."""
    started = [p for p in pods if (p.get("status") or {}).get("phase") in ("Running", "Succeeded")]
    return started[-1] if started else None


def last_progress(log: str) -> dict | None:
    """The last progress line of a download's log."""
    for line in reversed(log.splitlines()):
        if line.startswith(PROGRESS_PREFIX):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def last_failure(pods: list[dict]) -> str | None:
    """The last failed pod's one-line error (its termination message), oldest pods first."""
    error = None
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode"):
                said = (term.get("message") or "").strip().splitlines()
                last = said[-1] if said else ""
                # A progress line (the log fallback after an OOM kill, say) explains nothing.
                error = (last[:500] if last and not last.startswith("{") else
                         f"{term.get('reason') or 'Error'} (exit code {term['exitCode']})")
    return error


def conflicts(md: ModelDeployment, claim: str, reads: Reads) -> list[str]:
    """Objects with its children's names that it does not own: never taken over."""
    uid, cache = md.metadata.get("uid"), on_shared_cache(md)
    named = (("Deployment", reads.deployment), ("Service", reads.service),
             ("PersistentVolumeClaim", None if md.spec.storage.existing_claim or cache else reads.pvc))
    found = [f"{kind} {obj['metadata']['name']}" for kind, obj in named if obj is not None and not owned_by(obj, uid)]
    if cache and reads.pvc is not None and (reads.pvc["metadata"].get("labels") or {}).get(SHARED_CACHE) != SHARED_CLAIM:
        found.append(f"PersistentVolumeClaim {claim} (not a modelship shared cache)")
    return found


def cache_neighbours(md: ModelDeployment, neighbours: list[dict]) -> tuple[int, set[str]]:
    """On the shared cache: the bytes of the other ModelDeployments' distinct repo@sha that it
    does not hold itself, and the snapshots they use."""
    uid, resolved = md.metadata.get("uid"), md.status.resolved
    seen = {(resolved.repo, resolved.sha)} if resolved else set()
    total, in_use = 0, set()
    for other in neighbours:
        st = (other.get("status") or {}).get("resolved") or {}
        uses = ((other.get("spec") or {}).get("storage") or {}).get("sharedCache")
        if uses and other["metadata"]["uid"] != uid and st.get("repo") and st.get("sha"):
            in_use.add(snapshot_key(st["repo"], st["sha"]))
            if (st["repo"], st["sha"]) not in seen:
                seen.add((st["repo"], st["sha"]))
                total += int(st.get("totalBytes") or 0)
    return total, in_use


def volume_readers(claim: str, pods: list[dict], in_use: set[str]) -> tuple[set[str] | None, str | None]:
    """What the pods mounting the volume read (each the revision its template names, an old
    ReplicaSet's pods included until they are gone), added to `in_use`; None when a pod does
    not say (from before revisions were recorded). And a node where the volume is mounted."""
    node = None
    for pod in pods:
        claims = {(v.get("persistentVolumeClaim") or {}).get("claimName") for v in pod["spec"].get("volumes") or []}
        if claim not in claims or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        node = node or (pod.get("spec") or {}).get("nodeName")
        notes = pod["metadata"].get("annotations") or {}
        if REPO not in notes or REVISION not in notes:
            return None, node
        in_use.add(snapshot_key(notes[REPO], notes[REVISION]))
    return in_use, node


def observe(md: ModelDeployment, claim: str, reads: Reads) -> Observed:
    uid, cache = md.metadata.get("uid"), on_shared_cache(md)

    def owned(obj: dict | None) -> dict | None:  # only children of *this* ModelDeployment (a re-created one has a new uid)
        return obj if obj is not None and owned_by(obj, uid) else None

    downloads, collections = volume_jobs(md, reads.jobs)
    shared_bytes, in_use = cache_neighbours(md, reads.neighbours) if cache else (0, set())
    in_use, node = volume_readers(claim, reads.server_pods, in_use)
    return Observed(
        pvc=reads.pvc if md.spec.storage.existing_claim or cache else owned(reads.pvc),
        jobs=downloads, collect_jobs=collections, shared_bytes=shared_bytes,
        download_progress={name: last_progress(jp.log) for name, jp in reads.job_pods.items()},
        download_errors={name: last_failure(jp.pods) for name, jp in reads.job_pods.items()},
        volume_in_use=in_use, volume_node=node,
        deployment=owned(reads.deployment), service=owned(reads.service),
        pods=[p for p in reads.server_pods if (p["metadata"].get("labels") or {}).get(DEPLOYMENT_LABEL) == md.name],
        conflicts=conflicts(md, claim, reads),
    )

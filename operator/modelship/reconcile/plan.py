"""The decisions: pure functions from (desired, observed) to (actions, status).

`plan()` never talks to the API server. It takes the ModelDeployment, the outcome of
resolution, the children the operator observed and the settings, and returns the objects to
apply or delete, the whole new status (conditions included) and when to look again. The
controller executes the plan; the unit tests call `plan()` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .. import manifests as builders
from ..api import Condition, ModelDeployment, ResolvedModel
from ..manifests import APPLIED_HASH, Placement
from ..units import quantity_bytes
from .resolve import ResolveError
from ..settings import Settings
from ..units import GIB, human_bytes


@dataclass
class SpecError(Exception):
    """The spec was admitted but cannot work with this operator's configuration (permanent)."""

    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


@dataclass
class Observed:
    """The children as the API server last showed them (None: absent)."""

    pvc: dict | None = None
    jobs: list[dict] = field(default_factory=list)
    deployment: dict | None = None
    service: dict | None = None
    pods: list[dict] = field(default_factory=list)
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
    field_manager: str | None = None  # a ModelDeployment's own share of a shared object

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
    actions: list[Action]
    status: dict
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


# --- policy ----------------------------------------------------------------------------------


def choose_engine(requested: str, fmt: str) -> str:
    native = "llamacpp" if fmt == "gguf" else "tgi"
    if requested in ("auto", native):
        return native
    if requested == "llamacpp":
        raise SpecError("EngineMismatch", "engine.type is llamacpp, which serves GGUF files, but this repository "
                                          "has safetensors weights: use engine.type tgi (or auto), or a GGUF repo")
    raise SpecError("EngineMismatch", "engine.type is tgi, but the resolved files are GGUF, which llama.cpp "
                                      "serves: use engine.type llamacpp (or auto), or a safetensors repo")


def place(md: ModelDeployment, engine: str, settings: Settings) -> Placement:
    spec = md.spec
    gpus = spec.gpus if spec.gpus is not None else (1 if engine == "tgi" else 0)
    if engine == "tgi" and gpus == 0:
        raise SpecError("GPUsRequired", "TGI needs at least one GPU: set gpus to 1 or more")
    name = spec.pool or (settings.default_gpu_pool if gpus else settings.default_cpu_pool)
    profile = settings.pools.get(name)
    if profile is None:
        raise SpecError("PoolNotFound", f"pool {name!r} is not configured in the operator; known pools: "
                                        f"{', '.join(sorted(settings.pools))}")
    if gpus and not profile.gpu_resource:
        raise SpecError("PoolHasNoGPUs", f"pool {name!r} has no GPUs (no gpuResource in the operator's "
                                         f"configuration), but {gpus} GPU(s) were asked for: set gpus to 0 or "
                                         f"choose a GPU pool")
    if gpus and profile.max_gpus is not None and gpus > profile.max_gpus:
        raise SpecError("TooManyGPUs", f"pool {name!r} has at most {profile.max_gpus} GPUs per node, but gpus "
                                       f"is {gpus}: lower gpus or choose a larger pool")
    return Placement(name, profile, gpus)


def check_storage(md: ModelDeployment, resolved: ResolvedModel) -> None:
    if md.spec.storage.shared_cache and md.spec.model.endpoint:
        # Paths in the cache name a repo and a commit, not where they came from: a Hub of one's
        # own could otherwise put other bytes under a name others trust.
        raise SpecError("SharedCacheEndpoint", "storage.sharedCache holds files from the operator's hubEndpoint "
                                               "only; remove model.endpoint or set storage.sharedCache: false")
    size = md.spec.storage.size
    if size is not None and quantity_bytes(size) < resolved.total_bytes:
        need = f"{-(-resolved.total_bytes // GIB)}Gi"
        raise SpecError("StorageTooSmall", f"storage.size {size} is smaller than the model's files "
                                           f"({resolved.total_bytes} bytes): set it to at least {need}, or "
                                           f"remove it to size the volume automatically")


# --- conditions ------------------------------------------------------------------------------


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


# --- the plan --------------------------------------------------------------------------------


def _job_state(job: dict | None) -> tuple[str, str]:
    if job is None:
        return "Absent", ""
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "Complete", ""
        if c.get("status") == "True" and c.get("type") in ("Failed", "FailureTarget"):
            return "Failed", f"{c.get('reason', 'Failed')}: {c.get('message', '')}".strip(": ")
    return "Running", ""


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


def _needs_apply(desired: dict, observed: dict | None) -> bool:
    """Absent, built from another spec (the applied hash), or changed by hand since (drift)."""
    if observed is None:
        return True
    have = (observed.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH)
    if have != desired["metadata"]["annotations"][APPLIED_HASH]:
        return True
    return not contains(observed.get("spec"), desired.get("spec"))


def plan(md: ModelDeployment, resolution: ResolvedModel | ResolveError | SpecError, observed: Observed,
         settings: Settings, now: str, endpoint: str) -> Plan:
    gen = md.generation
    conditions = [c.wire() for c in md.status.conditions]
    status: dict = {"observedGeneration": gen, "selector": builders.selector_string(md)}
    prev = md.status.wire()
    for key in ("resolved", "download", "endpoint"):
        if key in prev:
            status[key] = prev[key]
    events: list[Event] = []
    actions: list[Action] = []

    def cond(type_: str, st: str, reason: str, message: str) -> None:
        set_condition(conditions, type_, st, reason, message, gen, now)

    def finish(phase: str, requeue: float | None = None) -> Plan:
        status["phase"] = phase
        status["conditions"] = conditions
        dep = observed.deployment
        status["replicas"] = int(((dep or {}).get("status") or {}).get("replicas") or 0)
        status["readyReplicas"] = int(((dep or {}).get("status") or {}).get("readyReplicas") or 0)
        before = {c.type: (c.status, c.reason) for c in md.status.conditions}
        for c in conditions:
            if before.get(c["type"]) != (c["status"], c["reason"]) and c["type"] == "Ready":
                failed = phase == "Failed"
                if c["status"] == "True" or failed:
                    events.append(Event("Warning" if failed else "Normal", c["reason"], c["message"]))
        return Plan(actions, status, events, requeue)

    def stop(error: ResolveError | SpecError, stage: str) -> Plan:
        """Resolution or placement failed: say so, change nothing that runs."""
        transient = isinstance(error, ResolveError) and error.transient
        if stage == "Resolved":
            cond("Resolved", "False", error.reason, error.message)
        cond("Ready", "False", error.reason, error.message)
        _serving_conditions(observed, md, cond, downloaded=None)
        return finish("Resolving" if transient else "Failed", 30.0 if transient else None)

    if isinstance(resolution, SpecError):
        return stop(resolution, "Ready")
    if isinstance(resolution, ResolveError):
        return stop(resolution, "Resolved")
    resolved = resolution
    status["resolved"] = resolved.wire()
    what = (f"{len(resolved.files)} files, {human_bytes(resolved.total_bytes)}, served by {resolved.engine}")
    if resolved.moved_from:
        cond("Resolved", "True", "RevisionMoved", f"{resolved.revision} moved from {resolved.moved_from[:7]} to "
                                                  f"{resolved.sha[:7]} (revisionPolicy Follow): {what}")
    else:
        cond("Resolved", "True", "Resolved", f"{resolved.repo}@{resolved.revision} is commit {resolved.sha}: {what}")
    try:
        placement = place(md, resolved.engine, settings)
        check_storage(md, resolved)
    except SpecError as e:
        return stop(e, "Ready")

    if observed.conflicts:
        return stop(SpecError("ResourceConflict", f"{', '.join(observed.conflicts)} already exist(s) and do(es) "
                                                  f"not belong to this ModelDeployment; the operator does not take "
                                                  f"over objects it did not create: delete or rename them, or "
                                                  f"give the ModelDeployment another name"), "Ready")

    svc = builders.service(md)
    status["endpoint"] = {"url": builders.service_url(md), "openAIBaseURL": builders.service_url(md) + "/v1",
                          "model": md.name}
    desired: list[tuple[dict, dict | None]] = [(svc, observed.service)]

    def blocked(reason: str, message: str, phase: str, requeue: float | None) -> Plan:
        """The weights cannot be had: say why; keep applying what does not depend on them."""
        cond("Downloaded", "False", reason, message)
        cond("Ready", "False", reason, message)
        _serving_conditions(observed, md, cond, downloaded=False)
        _apply(desired, actions)
        return finish(phase, requeue)

    # The weights' volume: created unless the user brought one; grown, never shrunk.
    if md.spec.storage.existing_claim:
        if observed.pvc is None:
            return blocked("ClaimNotFound", f"storage.existingClaim {md.spec.storage.existing_claim!r} does not "
                           f"exist in namespace {md.namespace}: create it, or remove existingClaim to let the "
                           f"operator create a volume", "Pending", 15.0)
    else:
        # While a new revision downloads next to the one being served, the volume holds both;
        # the shared cache holds every repo@sha of the ModelDeployments that use it.
        served = ((observed.deployment or {}).get("metadata", {}).get("annotations") or {})
        both = (resolved.total_bytes + int(served.get(builders.WEIGHTS_BYTES, 0))
                if served.get(builders.REVISION, resolved.sha) != resolved.sha else resolved.total_bytes)
        shared = md.spec.storage.shared_cache
        want = builders.pvc(md, resolved, settings, total_bytes=both + (observed.shared_bytes if shared else 0))
        if observed.pvc is None:
            desired.append((want, None))
        else:
            have = quantity_bytes(((observed.pvc.get("spec") or {}).get("resources") or {})
                                  .get("requests", {}).get("storage", "0"))
            joined = builders.owned_by(observed.pvc, md.metadata.get("uid"))
            if quantity_bytes(want["spec"]["resources"]["requests"]["storage"]) > have or not joined:
                if shared and not joined:  # join as an owner; never shrink what others need
                    want["spec"]["resources"]["requests"]["storage"] = max(
                        want["spec"]["resources"]["requests"]["storage"], observed.pvc["spec"]["resources"]
                        ["requests"]["storage"], key=quantity_bytes)
                desired.append((want, observed.pvc))

    # The download: one Job per (revision, files, volume); stale ones go.
    pin = None
    shared = builders.on_shared_cache(md)
    if md.spec.storage.access_mode == "ReadWriteOnce" and not shared:  # attached where the servers run
        pin = next((p["spec"]["nodeName"] for p in observed.pods
                    if (p.get("spec") or {}).get("nodeName") and not p["metadata"].get("deletionTimestamp")), None)
    annotations = ((observed.deployment or {}).get("metadata", {}).get("annotations") or {})
    serving = (f"{annotations[builders.REPO]}@{annotations[builders.REVISION]}"
               if builders.REPO in annotations and annotations.get(builders.REVISION) != resolved.sha else None)
    job = builders.download_job(md, resolved, endpoint, settings, pin_node=pin, serving=serving)
    current = next((j for j in observed.jobs if j["metadata"]["name"] == job["metadata"]["name"]), None)
    for other in observed.jobs:
        if other is not current and not shared:  # shared Jobs go with their last owner
            actions.append(Action("delete", "Job", other["metadata"]["name"], exists=True))
    state, why = _job_state(current)
    volume_uid = (observed.pvc or {}).get("metadata", {}).get("uid")
    before_dl = md.status.download
    if (current is None and before_dl and before_dl.completed_job == job["metadata"]["name"]
            and before_dl.volume_uid in (None, volume_uid)):
        state = "Complete"  # verified earlier on this very volume; the Job has been cleaned up since
    # A finished download counts only while its files can still be there: the ledger of a
    # volume the operator made still names them (a collection has not removed them), and
    # the claim is the one it filled (not deleted and made again since).
    key = builders.snapshot_key(resolved.repo, resolved.sha)
    ledger = _ledger(observed.pvc)
    refill = None
    if state == "Complete" and observed.pvc is not None:
        if not md.spec.storage.existing_claim and key not in ledger.values():
            refill = "they were removed from it (or it is a new claim)"
        elif before_dl and before_dl.volume_uid and volume_uid and before_dl.volume_uid != volume_uid:
            refill = "the claim was deleted and made again"
    if refill:
        if current is not None:  # its name is the download's: it must go before the download runs again
            actions.append(Action("delete", "Job", job["metadata"]["name"], exists=True))
        state = "Refill"
    collecting = next((j for j in observed.collect_jobs if _job_state(j)[0] == "Running"), None)
    total = resolved.total_bytes
    live = observed.download_progress.get(job["metadata"]["name"]) or {}
    before = md.status.download if md.status.download and md.status.download.job == job["metadata"]["name"] else None
    done = total if state == "Complete" else min(max(int(live.get("done") or 0),
                                                     before.bytes_done if before else 0), total)
    status["download"] = {"job": job["metadata"]["name"], "bytesDone": done, "bytesTotal": total,
                          "percent": 100 if total == 0 or done >= total else int(100 * done / total)}
    if state == "Running" and live.get("eta"):
        status["download"]["etaSeconds"] = int(live["eta"])
    if state == "Complete":
        status["download"]["completedJob"] = job["metadata"]["name"]
        if volume_uid:
            status["download"]["volumeUID"] = volume_uid
    downloaded = state == "Complete"
    if downloaded:
        cond("Downloaded", "True", "Downloaded",
             f"{human_bytes(total)} of {resolved.repo}@{resolved.short_sha or resolved.sha[:7]} are on volume "
             f"{builders.claim_name(md)}")
    elif state == "Failed":
        said = observed.download_errors.get(job["metadata"]["name"])
        return blocked("DownloadFailed", f"download Job {job['metadata']['name']} failed ({why})"
                       + (f": {said}" if said else "") + f"; see `kubectl logs job/{job['metadata']['name']}`, fix "
                       f"the cause, then delete the Job to retry", "Failed", None)
    elif state == "Refill":
        msg = (f"the files of {resolved.repo}@{resolved.sha[:7]} are no longer on volume {builders.claim_name(md)}: "
               f"{refill}; downloading them again")
        cond("Downloaded", "False", "Downloading", msg)
        if current is None:
            desired.append((job, None))
    elif current is None and collecting is not None:  # downloads wait for the collection, and it for them
        msg = (f"waiting for Job {collecting['metadata']['name']}, which removes snapshots nothing uses any more "
               f"from volume {builders.claim_name(md)}, to finish before downloading")
        cond("Downloaded", "False", "WaitingForCollection", msg)
    else:
        if current is None:  # a Job's pod template is immutable; its name already fingerprints it
            desired.append((job, None))
        elif shared and not builders.owned_by(current, md.metadata.get("uid")):
            # another ModelDeployment's download of the same files: join it
            desired.append((job, current))
        msg = (f"downloading {len(resolved.files)} files with Job {job['metadata']['name']}: "
               f"{human_bytes(done)} of {human_bytes(total)} ({status['download']['percent']}%)"
               + (f", about {status['download']['etaSeconds']} s left" if "etaSeconds" in status["download"] else "")
               + (f"; last attempt: {observed.download_errors[job['metadata']['name']]}"
                  if observed.download_errors.get(job["metadata"]["name"]) else ""))
        cond("Downloaded", "False", "Downloading", msg)

    # Serving: only once the weights are there. While a new revision downloads, the old
    # Deployment (if any) keeps serving.
    if downloaded:
        dep = builders.deployment(md, resolved, placement, settings)
        desired.append((dep, observed.deployment))
        rolling = _needs_apply(dep, observed.deployment)
    else:
        rolling = False
    _apply(desired, actions)
    if not md.spec.storage.existing_claim:  # a volume the operator made: it keeps its ledger, and collects
        if key not in ledger.values():  # recorded before the Job that puts it there is created
            at = next((i for i, a in enumerate(actions) if a.kind == "Job"), len(actions))
            actions.insert(at, Action("annotate", "PersistentVolumeClaim", builders.claim_name(md),
                                      {builders.ledger_annotation(key): key}, exists=True))
        if downloaded and observed.pvc is not None:
            failed = _collect(md, resolved, observed, settings, ledger, pin, actions, events)
            if failed:
                conditions[[c["type"] for c in conditions].index("Downloaded")]["message"] += failed

    if not downloaded:
        _serving_conditions(observed, md, cond, downloaded=False)
        cond("Ready", "False", "Downloading", msg)
        return finish("Downloading", 3.0)  # the Job's log is read for progress
    return _serving(md, observed, cond, finish, rolling)


def _ledger(pvc: dict | None) -> dict[str, str]:
    """The snapshots the operator let onto a volume and has not collected: annotation -> repo@sha."""
    annotations = ((pvc or {}).get("metadata") or {}).get("annotations") or {}
    return {k: v for k, v in annotations.items() if k.startswith(builders.SNAPSHOT_PREFIX)}


def _collect(md: ModelDeployment, resolved: ResolvedModel, observed: Observed, settings: Settings,
             ledger: dict[str, str], pin: str | None, actions: list[Action], events: list[Event]) -> str:
    """Collect the snapshots of the volume that nothing uses any more: once no download runs
    on it, with one Job that keeps everything in use. Returns what to add to the Downloaded
    message when a collection failed."""
    if observed.volume_in_use is None or any(_job_state(j)[0] == "Running" for j in observed.jobs):
        return ""  # cannot tell what is in use, or a download is running: later
    in_use = set(observed.volume_in_use) | {builders.snapshot_key(resolved.repo, resolved.sha)}
    served = ((observed.deployment or {}).get("metadata") or {}).get("annotations") or {}
    if builders.REPO in served and builders.REVISION in served:
        in_use.add(builders.snapshot_key(served[builders.REPO], served[builders.REVISION]))
    claim = builders.claim_name(md)
    failed = ""
    for job in observed.collect_jobs:
        state, why = _job_state(job)
        name = job["metadata"]["name"]
        if state == "Running":
            return ""
        if state == "Failed":
            failed = (f"; removing unused snapshots from the volume failed (Job {name}: {why}): see `kubectl logs "
                      f"job/{name}`, then delete the Job to try again")
            continue
        kept = set(filter(None, ((job["metadata"].get("annotations") or {}).get(builders.KEEP) or "").split(",")))
        gone = {k: None for k, v in ledger.items() if v not in kept and v not in in_use}
        if gone:
            actions.append(Action("annotate", "PersistentVolumeClaim", claim, gone, exists=True))
            events.append(Event("Normal", "Collected", f"removed {', '.join(sorted(ledger[k] for k in gone))} from "
                                                       f"volume {claim}: nothing uses it any more"))
            for k in gone:
                ledger.pop(k)
        actions.append(Action("delete", "Job", name, exists=True))
    stale = set(ledger.values()) - in_use
    if stale and not failed:
        if builders.on_shared_cache(md):  # an RWO volume is collected where some pod has it attached
            pin = observed.volume_node if md.spec.storage.access_mode == "ReadWriteOnce" else None
        job = builders.collect_job(md, settings, sorted(in_use), pin_node=pin)
        if not any(j["metadata"]["name"] == job["metadata"]["name"] for j in observed.collect_jobs):
            _apply([(job, None)], actions)
    return failed


def _apply(desired: list[tuple[dict, dict | None]], actions: list[Action]) -> None:
    for body, seen in desired:
        if _needs_apply(body, seen):
            refs = body["metadata"].get("ownerReferences") or [{}]
            manager = None if refs[0].get("controller", True) else builders.field_manager_of(refs[0], body)
            actions.append(Action("apply", body["kind"], body["metadata"]["name"], body, exists=seen is not None,
                                  field_manager=manager))


def _serving_conditions(observed: Observed, md: ModelDeployment, cond, downloaded: bool | None) -> tuple[int, int]:
    """Available from what runs now (an older revision may still serve)."""
    dep_status = ((observed.deployment or {}).get("status") or {})
    ready = int(dep_status.get("readyReplicas") or 0)
    if observed.deployment is None:
        reason = "WaitingForDownload" if downloaded is False else "NotCreated"
        cond("Available", "False", reason, "no serving replica yet")
    elif ready > 0:
        cond("Available", "True", "ReplicasAvailable", f"{ready} replica(s) ready")
    elif md.spec.replicas == 0:
        cond("Available", "False", "ScaledToZero", "replicas is 0: nothing serves; the weights are kept")
    else:
        problems = pod_problems(observed.pods)
        cond("Available", "False", "NoReplicaReady",
             "; ".join(problems) if problems else "waiting for the engine to load the model and pass its probes")
    return ready, int(dep_status.get("updatedReplicas") or 0)


def _serving(md: ModelDeployment, observed: Observed, cond, finish, rolling: bool) -> Plan:
    want = md.spec.replicas
    ready, updated = _serving_conditions(observed, md, cond, downloaded=True)
    dep = observed.deployment or {}
    settled = (not rolling and dep and int((dep.get("status") or {}).get("observedGeneration") or 0)
               >= int(dep.get("metadata", {}).get("generation") or 0))
    if want == 0 and settled:
        cond("Ready", "True", "ScaledToZero", "replicas is 0: nothing serves; scale up to serve again")
        return finish("Ready")
    if settled and ready >= want and updated >= want:
        cond("Ready", "True", "Ready", f"{ready}/{want} replicas ready")
        return finish("Ready")
    problems = pod_problems(observed.pods)
    detail = ("; " + "; ".join(problems)) if problems else ""
    if rolling or not settled or updated < want:
        cond("Ready", "False", "RollingOut", f"rolling out the serving pods: {updated}/{want} updated, "
                                             f"{ready} ready{detail}")
        return finish("Starting", 15.0)
    cond("Ready", "False", "ReplicasNotReady", f"{ready}/{want} replicas ready{detail}")
    return finish("Degraded" if ready > 0 else "Starting", 15.0)

"""The Jobs that work on the weights' volume, both running this project's image: the
download (`modelship fetch`) and the collection of snapshots nothing uses (`modelship
collect`). A Job's pod template cannot change, so each Job is named by everything it does:
a different download is a different Job."""

from __future__ import annotations

from ..api import JOB_NAME_MAX, ModelDeployment, ResolvedFile, ResolvedModel
from ..settings import Settings
from .meta import KEEP, REPO, REVISION, claim_name, digest, finish, shares_volume_jobs, volume_job_labels
from .pods import FETCH_UID, pin, restricted_container, restricted_pod, schedule
from .volume import MODELS_MOUNT

# `modelship fetch` exits with this when the volume is full (modelship.weights.VOLUME_FULL_EXIT,
# checked equal by a test: the builders import no program): the Job fails at once, as another
# pod would find the volume as full, and the operator says so (condition reason VolumeFull).
VOLUME_FULL_EXIT = 28


def download_job(md: ModelDeployment, resolved: ResolvedModel, endpoint: str, settings: Settings,
                 pin_node: str | None = None, serving: str | None = None) -> dict:
    """The Job that puts the files on the volume. `pin_node` runs it on the node of a serving
    pod, where a ReadWriteOnce volume is attached; `serving` (repo@sha) is kept when a volume
    of the ModelDeployment's own is pruned."""
    args = ["fetch", "--repo", resolved.repo, "--revision", resolved.sha, "--endpoint", endpoint,
            "--dest", MODELS_MOUNT, "--user", md.namespace]
    args += [f"--file={file_spec(f)}" for f in resolved.files]
    if not md.spec.storage.existing_claim and not md.spec.storage.shared_cache:
        # A volume of its own holds what is served and what is about to be, nothing else.
        args += ["--prune"] + (["--keep", serving] if serving else [])
    env = [{"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"}]
    if settings.hub_ca_bundle:  # a mirror's private CA, trusted besides the system's
        env.append({"name": "MODELSHIP_HUB_CA_BUNDLE", "value": settings.hub_ca_bundle})
    ref = md.spec.model.token_secret_ref
    if ref:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    elif settings.default_token_secret:  # the operator's default, where the namespace has it
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": settings.default_token_secret, "key": "token", "optional": True}}})
    return _volume_job(md, settings, "download", "fetch", args, env, pin_node,
                       {REVISION: resolved.sha, REPO: resolved.repo}, [resolved.repo, resolved.sha],
                       backoff=settings.download_backoff_limit, deadline=settings.download_deadline_seconds,
                       fail_job_on=VOLUME_FULL_EXIT)


def file_spec(f: ResolvedFile) -> str:
    """A file as `modelship fetch --file` takes it: SIZE:SHA256:PATH, SIZE:git-SHA1:PATH or SIZE::PATH."""
    return f"{f.size}:{f.sha256 or (f'git-{f.git_sha1}' if f.git_sha1 else '')}:{f.path}"


def collect_job(md: ModelDeployment, settings: Settings, keep: list[str], pin_node: str | None = None) -> dict:
    """The Job that removes from the volume every snapshot not in `keep` (and the blobs only
    they used). Named by what it keeps: one collection per set of snapshots in use."""
    keep = sorted(keep)
    args = ["collect", "--dest", MODELS_MOUNT, "--user", md.namespace] + [a for k in keep for a in ("--keep", k)]
    return _volume_job(md, settings, "collect", "collect", args, [], pin_node, {KEEP: ",".join(keep)}, keep,
                       backoff=2, deadline=1800)


def _volume_job(md: ModelDeployment, settings: Settings, component: str, verb: str, args: list[str],
                env: list[dict], pin_node: str | None, annotations: dict[str, str], identity: list,
                backoff: int, deadline: int, fail_job_on: int | None = None) -> dict:
    """A Job of the modelship image that works on the weights' volume (and on nothing else)."""
    shared = shares_volume_jobs(md)
    job_labels = volume_job_labels(md, component)
    pod = {
        "metadata": {"labels": dict(job_labels)},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": restricted_pod(FETCH_UID),
            "containers": [{
                "name": verb, "image": settings.images.modelship, "args": args, "env": env,
                "securityContext": restricted_container(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                # it writes only to the volume: no /tmp (on the test bed's local node an
                # emptyDir there would also hide a checkout that lives under /tmp)
                "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT}],
            }],
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": claim_name(md)}}],
        },
    }
    if settings.download_pool:
        schedule(pod["spec"], settings.pools[settings.download_pool])
    # On a shared volume: named by what it does alone (its pod names the claim), so ModelDeployments
    # of one repo@sha share one Job. A Job's name is a label value of its pods: at most 63
    # characters, so the digest gives way to a long name (48, the longest the CRD admits, leaves
    # 6 hex digits for `-collect-`).
    prefix = f"{'modelship' if shared else md.name}-{verb}-"
    name = prefix + digest([*identity, pod], min(8, JOB_NAME_MAX - len(prefix)))
    if pin_node:
        pin(pod["spec"], pin_node)
    return finish({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": dict(job_labels), "annotations": annotations},
        "spec": {"backoffLimit": backoff, "activeDeadlineSeconds": deadline, "template": pod,
                 **({"podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
                     "containerName": verb, "operator": "In", "values": [fail_job_on]}}]}} if fail_job_on else {})},
    }, md, co_owned=shared)

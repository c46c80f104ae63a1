"""The one thin layer that talks to the API server for the reconcile loop.

Children are written with server-side apply (field manager from the settings, conflicts
forced: the operator owns what it declares), deleted tolerating 404, and every write is
announced with an Event on the ModelDeployment. The `kubernetes` client is synchronous;
callers run these methods in a thread.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import uuid

from kubernetes import client
from kubernetes.client.rest import ApiException

from .. import api
from ..manifests import (COMPONENT, DEPLOYMENT_LABEL, MANAGED_BY, REPO, REVISION, SHARED_CACHE, SHARED_CLAIM,
                       on_shared_cache, owned_by, snapshot_key)
from .plan import Action, Event, Observed

log = logging.getLogger("modelship")

APPLY = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_transient(e: Exception) -> bool:
    """Worth retrying: the API server is busy, away, or the object changed under us."""
    if isinstance(e, ApiException):
        return e.status in (0, 409, 429) or e.status >= 500
    return isinstance(e, (ConnectionError, TimeoutError, OSError))


class Kube:
    def __init__(self, api_client: client.ApiClient, field_manager: str):
        self.client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.field_manager = field_manager

    # --- the ModelDeployment ---------------------------------------------------------------

    def get_md(self, namespace: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_mds(self, namespaces: list[str]) -> list[dict]:
        if not namespaces:
            return self.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)["items"]
        return [md for ns in namespaces
                for md in self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL)["items"]]

    def write_status(self, namespace: str, name: str, status: dict) -> None:
        """Replace the whole status (a merge patch would keep nested fields that went away)."""
        self.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name, [{"op": "add", "path": "/status", "value": status}],
            _content_type=JSON_PATCH)

    @staticmethod
    def refusal(e: ApiException) -> str:
        """The API server's own words for a refused request."""
        try:
            import json

            return json.loads(e.body).get("message") or str(e.reason)
        except (TypeError, ValueError):
            return f"{e.status} {e.reason}"

    def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        """The value, or None if the Secret or its key is missing."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        raw = (secret.data or {}).get(key)
        return base64.b64decode(raw).decode().strip() if raw else None

    # --- children --------------------------------------------------------------------------

    def observe(self, md: api.ModelDeployment, claim: str) -> Observed:
        ns, name = md.namespace, md.name
        selector = f"{DEPLOYMENT_LABEL}={name}"

        def get(fn, obj_name):
            try:
                return self.client.sanitize_for_serialization(fn(obj_name, ns))
            except ApiException as e:
                if e.status == 404:
                    return None
                raise

        shared = on_shared_cache(md)
        jobs = self.batch.list_namespaced_job(ns, label_selector=(
            f"{SHARED_CACHE}={SHARED_CLAIM}" if shared else
            f"{selector},{COMPONENT} in (download,collect)"))
        # On the shared cache every serving pod of the namespace may mount the volume; this
        # ModelDeployment's own are among them.
        server_pods = [self.client.sanitize_for_serialization(p) for p in self.core.list_namespaced_pod(
            ns, label_selector=f"{MANAGED_BY}=modelship,{COMPONENT}=server" if shared else
            f"{selector},{COMPONENT}=server").items]
        pods = [p for p in server_pods if (p["metadata"].get("labels") or {}).get(DEPLOYMENT_LABEL) == name]
        uid = md.metadata.get("uid")

        def owned(obj: dict | None) -> dict | None:
            # Only children of *this* ModelDeployment (a re-created one has a new uid).
            return obj if obj is not None and owned_by(obj, uid) else None

        pvc = get(self.core.read_namespaced_persistent_volume_claim, claim)
        deployment = get(self.apps.read_namespaced_deployment, name)
        service = get(self.core.read_namespaced_service, name)
        # Objects with our names that this ModelDeployment does not own are never taken over.
        conflicts = [f"{kind} {obj['metadata']['name']}" for kind, obj in
                     (("Deployment", deployment), ("Service", service),
                      ("PersistentVolumeClaim", None if md.spec.storage.existing_claim or shared else pvc))
                     if obj is not None and owned(obj) is None]
        if shared and pvc is not None and (pvc["metadata"].get("labels") or {}).get(SHARED_CACHE) != SHARED_CLAIM:
            conflicts.append(f"PersistentVolumeClaim {claim} (not a modelship shared cache)")
        all_jobs = [j for j in (self.client.sanitize_for_serialization(j) for j in jobs.items) if shared or owned(j)]
        own_jobs = [j for j in all_jobs if j["metadata"]["labels"].get(COMPONENT) == "download"]
        collect_jobs = [j for j in all_jobs if j["metadata"]["labels"].get(COMPONENT) == "collect"]
        progress, failure = {}, {}
        for job in own_jobs:
            if not any(c.get("status") == "True" for c in (job.get("status") or {}).get("conditions") or []):
                progress[job["metadata"]["name"]], failure[job["metadata"]["name"]] = self.job_pods_say(
                    ns, job["metadata"]["name"])
        shared_bytes, in_use = 0, set()
        if shared:  # what the other users of the shared volume keep on it
            seen = {(md.status.resolved.repo, md.status.resolved.sha)} if md.status.resolved else set()
            for other in self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.PLURAL)["items"]:
                st = (other.get("status") or {}).get("resolved") or {}
                uses = ((other.get("spec") or {}).get("storage") or {}).get("sharedCache")
                if uses and other["metadata"]["uid"] != uid and st.get("repo") and st.get("sha"):
                    in_use.add(snapshot_key(st["repo"], st["sha"]))
                    if (st["repo"], st["sha"]) not in seen:
                        seen.add((st["repo"], st["sha"]))
                        shared_bytes += int(st.get("totalBytes") or 0)
        # Every pod that mounts the volume reads the revision its template names (an old
        # ReplicaSet's pods included, until they are gone).
        node = None
        for pod in server_pods:
            claims = {(v.get("persistentVolumeClaim") or {}).get("claimName") for v in pod["spec"].get("volumes") or []}
            if claim not in claims or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            node = node or (pod.get("spec") or {}).get("nodeName")
            notes = pod["metadata"].get("annotations") or {}
            if REPO not in notes or REVISION not in notes:
                in_use = None  # a pod from before revisions were recorded: cannot tell what it reads
                break
            in_use.add(snapshot_key(notes[REPO], notes[REVISION]))
        return Observed(
            pvc=pvc if md.spec.storage.existing_claim or shared else owned(pvc), shared_bytes=shared_bytes,
            jobs=own_jobs, collect_jobs=collect_jobs, download_progress=progress, download_errors=failure,
            volume_in_use=in_use, volume_node=node,
            deployment=owned(deployment),
            service=owned(service),
            pods=pods,
            conflicts=conflicts,
        )

    def job_pods_say(self, namespace: str, job: str) -> tuple[dict | None, str | None]:
        """The download's last progress line (from the running pod's log) and the last failed
        pod's one-line error (its termination message)."""
        import json

        pods = self.core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items
        pods.sort(key=lambda p: p.metadata.creation_timestamp)
        progress, error = None, None
        for pod in pods:
            for cs in pod.status.container_statuses or []:
                term = cs.state.terminated if cs.state else None
                if term and term.exit_code:
                    said = (term.message or "").strip().splitlines()
                    last = said[-1] if said else ""
                    # A progress line (the log fallback after an OOM kill, say) explains nothing.
                    error = (last[:500] if last and not last.startswith("{") else
                             f"{term.reason or 'Error'} (exit code {term.exit_code})")
        started = [p for p in pods if p.status.phase in ("Running", "Succeeded")]
        if started:  # the newest pod's last words (a finished pod said "done")
            try:
                log_text = self.core.read_namespaced_pod_log(started[-1].metadata.name, namespace, tail_lines=200,
                                                             _preload_content=False).data.decode(errors="replace")
            except ApiException:
                log_text = ""
            for line in reversed(log_text.splitlines()):
                if line.startswith('{"event"'):
                    try:
                        progress = json.loads(line)
                    except ValueError:
                        continue
                    break
        return progress, error

    def execute(self, action: Action, namespace: str) -> None:
        kind, name = action.kind, action.name
        if action.verb == "annotate":  # a merge patch: one key per snapshot, so writers never collide
            assert kind == "PersistentVolumeClaim"
            self.core.patch_namespaced_persistent_volume_claim(
                name, namespace, {"metadata": {"annotations": action.body}}, field_manager=self.field_manager,
                _content_type="application/merge-patch+json")
            return
        if action.verb == "apply":
            fn = {"PersistentVolumeClaim": self.core.patch_namespaced_persistent_volume_claim,
                  "Service": self.core.patch_namespaced_service,
                  "Job": self.batch.patch_namespaced_job,
                  "Deployment": self.apps.patch_namespaced_deployment}[kind]
            fn(name, namespace, action.body, field_manager=action.field_manager or self.field_manager, force=True,
               _content_type=APPLY)
            return
        fn = {"Job": self.batch.delete_namespaced_job, "Deployment": self.apps.delete_namespaced_deployment,
              "Service": self.core.delete_namespaced_service,
              "PersistentVolumeClaim": self.core.delete_namespaced_persistent_volume_claim}[kind]
        try:
            fn(name, namespace, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise

    def post_event(self, md: api.ModelDeployment, event: Event) -> None:
        """An Event on the ModelDeployment; failing to post one never fails a reconcile."""
        t = dt.datetime.now(dt.timezone.utc)
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{md.name}.{uuid.uuid4().hex[:12]}", "namespace": md.namespace},
            "involvedObject": {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": md.name,
                               "namespace": md.namespace, "uid": md.metadata.get("uid"),
                               "resourceVersion": md.metadata.get("resourceVersion")},
            "reason": event.reason, "message": event.message[:1024], "type": event.type,
            "source": {"component": "modelship-operator"}, "reportingComponent": "modelship.io/operator",
            "reportingInstance": os.environ.get("HOSTNAME", "modelship-operator"),
            "firstTimestamp": t.isoformat(), "lastTimestamp": t.isoformat(), "count": 1,
        }
        try:
            self.core.create_namespaced_event(md.namespace, body, _preload_content=False)
        except Exception as e:  # noqa: BLE001 - events are best effort
            log.warning("could not post event %s on %s/%s: %s", event.reason, md.namespace, md.name, e)

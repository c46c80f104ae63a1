"""Benchmark 7's floor: the cluster's own part of "all reconciled", with no operator.

`bench/scale.py --cluster-only` makes the same ModelDeployments, then does by itself, with
the operator's own builders (`modelship.manifests`), the least any operator must: for each,
its Service and its download Job at once (one Job for those that share it: one claim, one
repo@sha), and its Deployment as soon as its Job has completed; no status, no Event, no read
but one listing of the Jobs a second (and a watch of the Deployments, for when they are
Available). The time until
every one has its Service and Deployment is what the API server, the Job controller,
the scheduler and kwok need for that on this machine: no operator can take less.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from kubernetes import client

import scale_cluster as sc
from scale_watch import GROUP, PLURAL, POLL, VERSION, available, deployments


def run(api: client.ApiClient, namespace: str, count: int, make_model, timeout: float,
        extras: frozenset[str] = frozenset()) -> dict[str, float]:
    """The floor's figures (`_run`), the Deployments watched from before the first is made."""
    watched = deployments(api, namespace)  # whether they are Available, watched as scale.py does
    try:
        return _run(api, namespace, count, make_model, timeout, extras, watched)
    finally:
        watched.stop()


def _run(api: client.ApiClient, namespace: str, count: int, make_model, timeout: float,
         extras: frozenset[str], watched) -> dict[str, float]:
    """`extras`: requests the operator makes on top of the floor, added to see what they cost:
    `status` (a status write at each step: 2 a ModelDeployment), `gets` (a GET of the Service
    and of the Deployment before each is made: 2), `events` (an Event at each step: 2)."""
    from modelship import api as mapi
    from modelship import manifests
    from modelship.reconcile.policy import place
    from modelship.settings import Settings
    from tests.integration.conftest import catalog

    settings = Settings(pools=sc.POOLS, download_pool=sc.POOL, default_gpu_pool=f"{sc.POOL}-gpu",
                        default_cpu_pool=sc.POOL)
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    batch, apps = client.BatchV1Api(api), client.AppsV1Api(api)
    entry = next(e for e in catalog() if e["repo"] == make_model(0)["spec"]["model"]["repo"])
    resolved = mapi.ResolvedModel.model_validate(entry)
    start = time.monotonic()
    mds: dict[str, mapi.ModelDeployment] = {}

    def first(i: int) -> None:
        body = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, make_model(i))
        md = mapi.ModelDeployment.model_validate(body)
        mds[md.name] = md
        absent(core.read_namespaced_service, md.name)
        core.create_namespaced_service(namespace, manifests.service(md))
        try:
            batch.create_namespaced_job(namespace, manifests.download_job(md, resolved, "http://127.0.0.1:9",
                                                                          settings))
        except client.ApiException as e:
            if e.status != 409:  # (made already for another ModelDeployment that shares it)
                raise
        said(md, "Downloading")

    def absent(read, name: str) -> None:
        if "gets" in extras:
            try:
                read(name, namespace)
            except client.ApiException as e:
                if e.status != 404:
                    raise

    def said(md, phase: str) -> None:
        if "status" in extras:
            custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, md.name, {
                "status": {"phase": phase, "observedGeneration": 1}})
        if "events" in extras:
            core.create_namespaced_event(namespace, {
                "metadata": {"generateName": f"{md.name}."}, "type": "Normal", "reason": phase,
                "message": f"{md.name} is {phase}", "involvedObject": {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "name": md.name,
                    "namespace": namespace, "uid": md.metadata["uid"]}})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(first, range(count)))
    out = {"services and jobs made": time.monotonic() - start}
    print(f"  {out['services and jobs made']:6.1f} s: {count} ModelDeployments, Services and Jobs made", flush=True)
    made: set[str] = set()
    waiting: dict[str, list[str]] = {}  # each Job -> the ModelDeployments that wait for it
    for name, md in mds.items():
        waiting.setdefault(manifests.download_job(md, resolved, "http://127.0.0.1:9", settings)["metadata"]["name"],
                           []).append(name)

    def deploy(name: str) -> None:
        md = mds[name]
        absent(apps.read_namespaced_deployment, name)
        apps.create_namespaced_deployment(namespace, manifests.deployment(md, resolved, place(md, resolved.engine,
                                                                                              settings), settings))
        said(md, "Starting")

    with ThreadPoolExecutor(16) as pool:
        while len(made) < count and time.monotonic() - start < timeout:
            done = [n for j in batch.list_namespaced_job(namespace).items
                    if j.metadata.name in waiting and any(c.type == "Complete" and c.status == "True"
                                                          for c in j.status.conditions or [])
                    for n in waiting[j.metadata.name]]
            new = [n for n in done if n not in made]
            made.update(new)
            list(pool.map(deploy, new))
            print(f"  {time.monotonic() - start:6.1f} s: {len(made)}/{count} Jobs complete and Deployments made",
                  flush=True)
            time.sleep(1.0)
    out["all made"] = time.monotonic() - start if len(made) == count else float("inf")
    ready = 0
    while time.monotonic() - start < timeout:
        ready = available(watched)
        if ready == count:
            break
        time.sleep(POLL)
    out["all available"] = time.monotonic() - start if ready == count else float("inf")
    return out

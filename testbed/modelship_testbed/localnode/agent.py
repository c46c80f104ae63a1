"""The local node: a kubelet stand-in whose pods run as local processes.

It registers a real Node (the machine's real CPU and memory; optionally fake GPUs and the
gpu pool's labels and taint), keeps its Lease fresh, runs the pods bound to it (see
`pod.py`; the Agent gives each pod worker the `NodeServices` it needs), provisions
PersistentVolumes for its StorageClass as local folders, and serves the kubelet's log
endpoint so that `kubectl logs` works (plain HTTP on 127.0.0.1, behind `kubelet-streaming`,
which holds the kubelet port and serves `kubectl port-forward` itself; see kubelet_api.py).

A node named other than the test bed's local node is an extra one beside it (tests start one
as a GPU node: see `extra.py`): the flags override the test bed's GPUs, pod addresses and
kubelet ports for it; it keeps its pods, processes and records under `localnode/nodes/NAME`,
and it provisions no volumes (the local node does, as folders every node of this machine sees).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import os
import shutil
from pathlib import Path

import httpx
from kubernetes import client

from ..binaries import KUBERNETES_VERSION
from ..config import LOCAL_NODE_NAME, TestbedConfig
from .. import procs
from ..nodepools import GPU_RESOURCE, GPU_TAINT, PROVISIONER, pool_labels
from . import kube
from .images import ImageMap
from .pod import PodWorker, now_iso

log = logging.getLogger(__name__)

LEASE_SECONDS = 40
RENEW_SECONDS = 10


def _mem_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    raise RuntimeError("no MemTotal in /proc/meminfo")


def node_root(cfg: TestbedConfig, name: str) -> Path:
    """The node's own folder: the test bed's local node's, or an extra node's beside it."""
    return cfg.dir / "localnode" if name == LOCAL_NODE_NAME else cfg.dir / "localnode" / "nodes" / name


class Agent:
    labels: dict[str, str] = {}  # more Node labels, and taints, than the pool's (never mutated)
    taints: list[dict] = []

    def __init__(self, cfg: TestbedConfig, name: str, labels: dict[str, str] | None = None,
                 taints: list[dict] | None = None, pass_env: list[str] | None = None):
        self.cfg = cfg
        self.name = name
        self.labels, self.taints = dict(labels or {}), list(taints or [])
        self.provisions = name == LOCAL_NODE_NAME  # one provisioner for the test bed's volumes
        self.root = node_root(cfg, name)
        self.pods_dir = self.root / "pods"
        self.pids_dir = self.root / "pids"
        self.volumes_dir = cfg.dir / "volumes"
        for d in (self.pods_dir, self.pids_dir, self.volumes_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.api = kube.api_client(str(cfg.dir / "kubeconfig"))
        self.core = client.CoreV1Api(self.api)
        self.coord = client.CoordinationV1Api(self.api)
        self.storage = client.StorageV1Api(self.api)
        self.images = ImageMap(Path(cfg.images_file) if cfg.images_file else None)
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200))
        self.background: set[asyncio.Task] = set()  # fire-and-forget work, kept referenced
        port = str(cfg.ports.apiserver)
        # What a kubelet gives every container so that in-cluster clients find the API server;
        # here it is on loopback, not behind the `kubernetes` Service's ClusterIP.
        self.service_env = {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port, "KUBERNETES_PORT": f"tcp://127.0.0.1:{port}",
            f"KUBERNETES_PORT_{port}_TCP": f"tcp://127.0.0.1:{port}",
            f"KUBERNETES_PORT_{port}_TCP_ADDR": "127.0.0.1", f"KUBERNETES_PORT_{port}_TCP_PORT": port,
            f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        }
        # Variables of the agent's own environment every container gets too (an extra node
        # started from a checkout passes PYTHONPATH: its pods run that checkout's fakes).
        self.service_env.update({k: os.environ[k] for k in pass_env or [] if k in os.environ})
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()
        self.ips: dict[str, str] = {}
        self.cursor = 0  # index in self.net of the last pod address handed out
        self.net = ipaddress.ip_network(cfg.local_pod_cidr)
        self.provision_wanted = asyncio.Event()

    # --- NodeServices (pod.py): what the pod workers use ----------------------------------

    async def get(self, kind: str, ns: str, name: str) -> dict | None:
        fn = {
            "Secret": lambda: self.core.read_namespaced_secret(name, ns, _preload_content=False),
            "ConfigMap": lambda: self.core.read_namespaced_config_map(name, ns, _preload_content=False),
            "PersistentVolumeClaim": lambda: self.core.read_namespaced_persistent_volume_claim(
                name, ns, _preload_content=False),
            "PersistentVolume": lambda: self.core.read_persistent_volume(name, _preload_content=False),
        }[kind]
        try:
            resp = await kube.call(fn)
        except Exception as e:
            if kube.is_status(e, 404):
                return None
            raise
        obj = json.loads(resp.data)
        obj.setdefault("kind", kind)
        return obj

    async def request_token(self, ns: str, sa: str, spec: dict, pod: dict | None = None) -> tuple[str, int]:
        """A TokenRequest for a projected ServiceAccount token, bound to the pod as a kubelet's is."""
        body = {"spec": {"expirationSeconds": int(spec.get("expirationSeconds", 3600))}}
        if spec.get("audience"):
            body["spec"]["audiences"] = [spec["audience"]]
        if pod is not None:
            body["spec"]["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"],
                                              "uid": pod["metadata"]["uid"]}
        resp = await kube.call(self.core.create_namespaced_service_account_token, sa, ns, body)
        ttl = body["spec"]["expirationSeconds"]
        return resp.status.token, ttl

    async def patch_pod_status(self, ns: str, name: str, status: dict) -> None:
        try:
            await kube.call(self.core.patch_namespaced_pod_status, name, ns, {"status": status},
                            _content_type="application/merge-patch+json", _preload_content=False)
        except Exception as e:
            if not kube.is_status(e, 404):
                log.warning("status of pod %s/%s not written: %s", ns, name, e)

    async def delete_pod(self, ns: str, name: str, uid: str) -> None:
        body = client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid))
        try:
            await kube.call(self.core.delete_namespaced_pod, name, ns, body=body, _preload_content=False)
        except Exception as e:
            if not kube.is_status(e, 404, 409):
                log.warning("pod %s/%s not deleted: %s", ns, name, e)

    def event(self, obj: dict, kind: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        ts = now_iso()
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace") or "default"},
            "involvedObject": {"apiVersion": obj.get("apiVersion", "v1"), "kind": obj.get("kind", "Pod"),
                               "namespace": meta.get("namespace"), "name": meta["name"], "uid": meta["uid"]},
            "reason": reason, "message": message[:1000], "type": kind,
            "source": {"component": "kubelet", "host": self.name},
            "reportingComponent": "kubelet", "reportingInstance": self.name,
            "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
        }

        async def send() -> None:
            try:
                await kube.call(self.core.create_namespaced_event, body["metadata"]["namespace"], body,
                                _preload_content=False)
            except Exception:
                pass  # events are best effort, as in a kubelet

        self.spawn(send())

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def alloc_ip(self, uid: str, pod: dict, host_network: bool = False) -> str:
        if host_network:
            return "127.0.0.1"
        if uid in self.ips:
            return self.ips[uid]
        taken = set(self.ips.values())
        old = (pod.get("status") or {}).get("podIP")
        if old and ipaddress.ip_address(old) in self.net and old not in taken:
            self.ips[uid] = old
            return old
        # Round robin from the last address handed out, not the lowest free one: a released
        # address may still have sockets of its old pod's server winding down (FIN_WAIT,
        # TIME_WAIT), and a new server binding the same address and port would fail.
        size = self.net.num_addresses
        for step in range(1, size):
            self.cursor = (self.cursor + 1) % size
            ip = str(self.net[self.cursor])
            if ip.endswith((".0", ".1", ".255")) or ip in taken:
                continue
            self.ips[uid] = ip
            return ip
        raise RuntimeError(f"no free pod address left in {self.net}")

    def release(self, uid: str) -> None:
        self.ips.pop(uid, None)
        self.workers.pop(uid, None)
        self.finished.add(uid)

    def remember_pid(self, uid: str, container: str, pid: int) -> None:
        procs.record(self.pids_dir / f"{uid}-{container}", pid)

    def forget_pid(self, uid: str, container: str) -> None:
        (self.pids_dir / f"{uid}-{container}").unlink(missing_ok=True)

    def record_mountpoints(self, paths: list[str]) -> None:
        with open(self.root / "created-mountpoints", "a") as f:
            f.writelines(p + "\n" for p in paths)

    def find_worker(self, ns: str, name: str) -> PodWorker | None:
        return next((w for w in self.workers.values() if w.ns == ns and w.name == name), None)

    # --- the Node ------------------------------------------------------------------------

    def node_object(self) -> dict:
        gpus = self.cfg.local_node_gpus
        pool = "gpu" if gpus else "cpu"
        labels = {**pool_labels(pool, self.name, self.cfg.gpu_product, gpus),
                  "modelship.io/local-node": "true", "node.kubernetes.io/instance-type": "local-processes",
                  **self.labels}
        disk = shutil.disk_usage(self.cfg.dir)
        capacity = {"cpu": str(os.cpu_count() or 1), "memory": f"{_mem_kib()}Ki", "pods": "110",
                    "ephemeral-storage": f"{disk.total // 1024}Ki"}
        if gpus:
            capacity[GPU_RESOURCE] = str(gpus)
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": labels},
            "spec": {"taints": ([GPU_TAINT] if gpus else []) + self.taints},
            "status": {
                "capacity": capacity, "allocatable": capacity,
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": self.name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.cfg.ports.kubelet}},
                "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "osImage": "local processes",
                             "kernelVersion": os.uname().release, "kubeletVersion": KUBERNETES_VERSION,
                             "kubeProxyVersion": "", "containerRuntimeVersion": "modelship-localnode://0.1",
                             "machineID": "", "systemUUID": "", "bootID": ""},
                "conditions": self.node_conditions(),
            },
        }

    def node_conditions(self) -> list[dict]:
        ts = now_iso()
        conds = [("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                 ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                 ("PIDPressure", "False", "KubeletHasSufficientPID"),
                 ("Ready", "True", "KubeletReady")]
        return [{"type": t, "status": s, "reason": r, "message": f"modelship local node: {r}",
                 "lastHeartbeatTime": ts, "lastTransitionTime": self.started_at} for t, s, r in conds]

    async def register(self) -> None:
        self.started_at = now_iso()
        node = self.node_object()
        try:
            await kube.call(self.core.create_node, node, _preload_content=False)
            log.info("registered node %s", self.name)
        except Exception as e:
            if not kube.is_status(e, 409):
                raise
            await kube.call(self.core.patch_node, self.name,
                            {"metadata": {"labels": node["metadata"]["labels"]}, "spec": node["spec"]},
                            _preload_content=False)
            log.info("updated node %s", self.name)
        await kube.call(self.core.patch_node_status, self.name, {"status": node["status"]},
                        _content_type="application/merge-patch+json", _preload_content=False)

    async def heartbeat(self) -> None:
        lease_name, ns = self.name, "kube-node-lease"
        beats = 0
        while True:
            now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": lease_name, "namespace": ns},
                    "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}}
            try:
                try:
                    await kube.call(self.coord.patch_namespaced_lease, lease_name, ns, {"spec": body["spec"]},
                                    _content_type="application/merge-patch+json", _preload_content=False)
                except Exception as e:
                    if not kube.is_status(e, 404):
                        raise
                    await kube.call(self.coord.create_namespaced_lease, ns, body, _preload_content=False)
                if beats % 6 == 0:
                    await kube.call(self.core.patch_node_status, self.name,
                                    {"status": {"conditions": self.node_conditions()}},
                                    _preload_content=False)
                beats += 1
            except Exception as e:
                log.warning("heartbeat failed: %s", e)
            await asyncio.sleep(RENEW_SECONDS)

    # --- pods ----------------------------------------------------------------------------

    def on_pod(self, pod: dict, deleted: bool) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if deleted:
            if worker:
                worker.removed()
            return
        if worker:
            worker.update(pod)
            return
        if uid in self.finished:
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            # Finished before this agent started: nothing to run; finish a pending deletion.
            if pod["metadata"].get("deletionTimestamp"):
                self.finished.add(uid)
                self.spawn(self.delete_pod(pod["metadata"]["namespace"], pod["metadata"]["name"], uid))
            return
        worker = PodWorker(self, pod)
        self.workers[uid] = worker
        worker.update(pod)

    # --- volumes -------------------------------------------------------------------------

    def on_volume_change(self, obj: dict, deleted: bool) -> None:
        self.provision_wanted.set()

    async def provisioner(self, pvcs: kube.Informer, pvs: kube.Informer) -> None:
        while True:
            await self.provision_wanted.wait()
            self.provision_wanted.clear()
            try:
                await self.provision_once(list(pvcs.objects.values()), list(pvs.objects.values()))
            except Exception as e:
                log.warning("provisioner: %s", e)
                await asyncio.sleep(1)
                self.provision_wanted.set()

    async def provision_once(self, pvcs: list[dict], pvs: list[dict]) -> None:
        classes = {sc.metadata.name: sc for sc in (await kube.call(self.storage.list_storage_class)).items
                   if sc.provisioner == PROVISIONER}
        existing = {pv["metadata"]["name"] for pv in pvs}
        for pvc in pvcs:
            meta, spec = pvc["metadata"], pvc["spec"]
            sc = classes.get(spec.get("storageClassName") or "")
            if sc is None or spec.get("volumeName") or meta.get("deletionTimestamp"):
                continue
            if (pvc.get("status") or {}).get("phase") not in (None, "Pending"):
                continue
            name = f"pvc-{meta['uid']}"
            if name in existing:
                continue
            if spec.get("volumeMode") == "Block":
                self.event({**pvc, "kind": "PersistentVolumeClaim"}, "Warning", "ProvisioningFailed",
                           "the local node provisions only Filesystem volumes")
                continue
            path = self.volumes_dir / name
            path.mkdir(parents=True, exist_ok=True)
            pv = {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
                "spec": {
                    "capacity": {"storage": spec["resources"]["requests"]["storage"]},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": sc.reclaim_policy or "Delete",
                    "storageClassName": sc.metadata.name,
                    "volumeMode": "Filesystem",
                    "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                                 "name": meta["name"], "uid": meta["uid"]},
                },
            }
            try:
                await kube.call(self.core.create_persistent_volume, pv, _preload_content=False)
                self.event({**pvc, "kind": "PersistentVolumeClaim"}, "Normal", "ProvisioningSucceeded",
                           f"Successfully provisioned volume {name} at {path}")
            except Exception as e:
                if not kube.is_status(e, 409):
                    raise
        for pv in pvs:
            meta, spec = pv["metadata"], pv["spec"]
            if (meta.get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
                continue
            if (pv.get("status") or {}).get("phase") != "Released" or \
                    spec.get("persistentVolumeReclaimPolicy") != "Delete":
                continue
            path = Path((spec.get("hostPath") or {}).get("path", ""))
            if path.parent == self.volumes_dir:  # never delete outside the volumes folder
                await asyncio.to_thread(shutil.rmtree, path, True)
            try:
                await kube.call(self.core.delete_persistent_volume, meta["name"], _preload_content=False)
                log.info("deleted released volume %s", meta["name"])
            except Exception as e:
                if not kube.is_status(e, 404):
                    raise

    # --- main ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        from .kubelet_api import serve

        loop = asyncio.get_running_loop()
        # Processes of an earlier run of this agent (killed without stopping its pods):
        # its pods are about to be started afresh, on the same addresses.
        leftovers = procs.kill_recorded(self.pids_dir)
        if leftovers:
            log.info("killed %d processes left by an earlier run", leftovers)
        await self.register()
        server = await serve(self, self.cfg)
        pods = kube.Informer("pods", self.core.list_pod_for_all_namespaces, loop, self.on_pod,
                             field_selector=f"spec.nodeName={self.name}")
        informers, tasks = [pods], [asyncio.create_task(self.heartbeat())]
        if self.provisions:
            pvcs = kube.Informer("pvcs", self.core.list_persistent_volume_claim_for_all_namespaces, loop,
                                 self.on_volume_change)
            pvs = kube.Informer("pvs", self.core.list_persistent_volume, loop, self.on_volume_change)
            informers += [pvcs, pvs]
            tasks.append(asyncio.create_task(self.provisioner(pvcs, pvs)))
        for inf in informers:
            inf.start()
        log.info("local node %s ready", self.name)
        await stop.wait()
        log.info("stopping: terminating %d pods", len(self.workers))
        for inf in informers:
            inf.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*(w.terminate(delete_object=False, grace=min(w.grace(), 10.0))
                               for w in list(self.workers.values())), return_exceptions=True)
        await server.cleanup()
        await self.http.aclose()

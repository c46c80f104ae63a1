"""One pod on the local node: its volumes, its containers as local processes, its probes and
its status, from scheduling to deletion.

Each container runs in a mount namespace of its own (`unshare --mount`), where every volume
is bind-mounted at its `mountPath`, read-only where the pod says so, so that programs find
their files at the paths the pod spec names. The container's process group is killed on
deletion (SIGTERM, then SIGKILL after the grace period) and when the local node stops
(PR_SET_PDEATHSIG).

A pod worker knows its node only through `NodeServices`, the few things a pod needs from it
(the local node's `Agent` provides them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import shlex
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx

from ..procs import die_with_parent, signal_group
from . import envvars, hostpaths
from .images import ImageError, ImageMap
from .probes import Prober
from .volumes import VolumeError, VolumePending, Volumes, materialize

log = logging.getLogger(__name__)

BACKOFF_BASE = 10.0  # the kubelet's crash-loop back-off: 10 s, doubling, at most 5 min
BACKOFF_MAX = 300.0


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Container:
    spec: dict
    init: bool = False
    restart_count: int = 0
    state: dict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0  # monotonic, for probes' initialDelaySeconds
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    done: bool = False  # terminated and will not restart

    @property
    def name(self) -> str:
        return self.spec["name"]

    def status(self, pod_uid: str) -> dict:
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "containerID": f"localnode://{pod_uid}/{self.name}/{self.restart_count}" if "waiting" not in self.state
            else None,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }


class NodeServices(Protocol):
    """What a pod needs from the node it runs on, and nothing more."""

    pods_dir: Path  # each pod's private folder (volumes, logs) is made in it
    images: ImageMap  # which local program stands in for a container's image
    service_env: dict[str, str]  # what every container gets to find the API server
    http: httpx.AsyncClient  # the HTTP probes' client

    def alloc_ip(self, uid: str, pod: dict, host_network: bool = False) -> str:
        """The pod's own loopback address (127.0.0.1 with hostNetwork), the same on every call."""

    def release(self, uid: str) -> None:
        """The pod is finished here: its address is free again and it is not run again."""

    async def get(self, kind: str, ns: str, name: str) -> dict | None:
        """A Secret, ConfigMap, PersistentVolumeClaim or PersistentVolume; None when missing."""

    async def request_token(self, ns: str, sa: str, spec: dict, pod: dict | None = None) -> tuple[str, int]:
        """A ServiceAccount token bound to the pod, and its lifetime in seconds."""

    async def patch_pod_status(self, ns: str, name: str, status: dict) -> None:
        """Write the pod's status (a pod already gone is not an error)."""

    async def delete_pod(self, ns: str, name: str, uid: str) -> None:
        """Delete the pod object now, if it is still this uid."""

    def event(self, obj: dict, kind: str, reason: str, message: str) -> None:
        """An Event about the object, best effort, without waiting."""

    def remember_pid(self, uid: str, container: str, pid: int) -> None:
        """Record a container's process, so that a restarted node can kill what is left of it."""

    def forget_pid(self, uid: str, container: str) -> None:
        """The container's process is gone: drop its record."""

    def record_mountpoints(self, paths: list[str]) -> None:
        """Folders and files created on the host as mount points, for `down` to remove."""


class PodWorker:
    def __init__(self, node: NodeServices, pod: dict):
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.uid, self.name, self.ns = meta["uid"], meta["name"], meta["namespace"]
        self.dir = node.pods_dir / f"{self.ns}_{self.name}_{self.uid}"
        self.ip: str | None = None
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.init_containers = [Container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c) for c in spec.get("containers") or []]
        self.conditions: dict[str, dict] = {}
        self.phase = "Pending"
        self.start_time = now_iso()
        self.volumes = Volumes()
        self.stopping = asyncio.Event()
        self.dirty = asyncio.Event()
        self.gone = False
        self._tasks: list[asyncio.Task] = []
        self.main = asyncio.create_task(self.run(), name=f"pod-{self.ns}/{self.name}")
        self.writer = asyncio.create_task(self.write_status(), name=f"status-{self.ns}/{self.name}")
        self.deleter: asyncio.Task | None = None

    # --- events from the informer -------------------------------------------------------

    def update(self, pod: dict) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and self.deleter is None:
            self.deleter = asyncio.create_task(self.terminate(delete_object=True))

    def removed(self) -> None:
        """The pod object is gone (force-deleted): stop everything now, and write no more
        status: a new pod of the same name must not receive this one's."""
        self.gone = True
        self.writer.cancel()
        if self.deleter is None:
            self.deleter = asyncio.create_task(self.terminate(delete_object=False, grace=0))

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self.ip = self.node.alloc_ip(self.uid, self.pod, host_network=self.pod["spec"].get("hostNetwork", False))
            self.set_condition("PodScheduled", True)
            self.set_condition("PodReadyToStartContainers", False)
            self.set_condition("Initialized", False, "ContainersNotInitialized")
            self.set_condition("ContainersReady", False, "ContainersNotReady")
            self.set_condition("Ready", False, "ContainersNotReady")
            self.mark()
            if not await self.prepare_volumes():
                return
            self.set_condition("PodReadyToStartContainers", True)
            for c in self.init_containers:
                await self.run_container(c)
                if self.stopping.is_set():
                    return
                if c.state.get("terminated", {}).get("exitCode") != 0:
                    self.phase = "Failed"
                    self.mark()
                    return
            self.set_condition("Initialized", True)
            self.mark()
            await asyncio.gather(*(self.run_container(c) for c in self.containers))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug here must show in the pod, not vanish in a task
            log.exception("pod %s/%s failed", self.ns, self.name)
            self.node.event(self.pod, "Warning", "Failed", f"local node error: {e}")

    async def prepare_volumes(self) -> bool:
        delay = 1.0
        while not self.stopping.is_set():
            try:
                self.volumes = await materialize(self.pod, self.dir, self.node.get, self.request_token)
                if self.volumes.tokens:
                    self._tasks.append(asyncio.create_task(self.refresh_tokens()))
                return True
            except (VolumePending, VolumeError) as e:
                for c in self.init_containers + self.containers:
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": str(e)}}
                self.node.event(self.pod, "Warning", "FailedMount", str(e))
                self.mark()
            if await self.sleep(delay):
                return False
            delay = min(delay * 2, 10.0)
        return False

    async def request_token(self, ns: str, sa: str, spec: dict) -> tuple[str, int]:
        return await self.node.request_token(ns, sa, spec, self.pod)

    async def refresh_tokens(self) -> None:
        """Rotate projected ServiceAccount tokens at 80% of their lifetime, as a kubelet does."""
        while not self.stopping.is_set():
            ttl = min(t.expires_in for t in self.volumes.tokens)
            if await self.sleep(max(ttl * 0.8, 5.0)):
                return
            for t in self.volumes.tokens:
                try:
                    token, t.expires_in = await self.request_token(self.ns, t.service_account, t.spec)
                    tmp = t.path.with_suffix(".tmp")
                    tmp.write_text(token)
                    tmp.replace(t.path)
                except Exception as e:
                    log.warning("token refresh for %s/%s failed: %s", self.ns, self.name, e)

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless the pod is stopping; True when it is."""
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
            return True
        except asyncio.TimeoutError:
            return False

    def should_restart(self, exit_code: int) -> bool:
        if self.restart_policy == "Always":
            return True
        if self.restart_policy == "OnFailure":
            return exit_code != 0
        return False

    async def run_container(self, c: Container) -> None:
        backoff = BACKOFF_BASE
        while not self.stopping.is_set():
            try:
                await self.start_process(c)
            except (ImageError, envvars.EnvError, VolumeError, OSError) as e:
                reason = getattr(e, "reason", None) or ("CreateContainerConfigError"
                                                        if isinstance(e, envvars.EnvError) else "CreateContainerError")
                c.state = {"waiting": {"reason": reason, "message": str(e)}}
                self.node.event(self.pod, "Warning", "Failed", f"Error: {e}")
                self.mark()
                if await self.sleep(backoff):
                    return
                if reason == "ErrImagePull":
                    c.state = {"waiting": {"reason": "ImagePullBackOff", "message": str(e)}}
                    self.mark()
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            started = time.monotonic()
            probes = self.start_probes(c)
            try:
                code = await c.proc.wait()
            finally:
                for t in probes:
                    t.cancel()
                # Whatever the main process left running in its group goes with it.
                signal_group(c.proc.pid, signal.SIGKILL)
                self.node.forget_pid(self.uid, c.name)
            finished = now_iso()
            reason = "Completed" if code == 0 else "Error"
            exit_code = code if code >= 0 else 128 - code  # killed by signal N -> 128+N, as runtimes report
            c.state = {"terminated": {"exitCode": exit_code, "reason": reason,
                                      "startedAt": c.state.get("running", {}).get("startedAt", finished),
                                      "finishedAt": finished, "containerID": f"localnode://{self.uid}/{c.name}/"
                                                                            f"{c.restart_count}"}}
            c.ready = False
            c.started = False
            c.proc = None
            if not self.stopping.is_set():
                self.node.event(self.pod, "Normal" if code == 0 else "Warning", "Exited",
                                 f"Container {c.name} exited with code {exit_code}")
            self.recompute()
            if self.stopping.is_set() or c.init and exit_code == 0 or not self.should_restart(exit_code):
                c.done = True
                self.recompute()
                return
            if time.monotonic() - started > 600:
                backoff = BACKOFF_BASE
            c.last_state = c.state
            c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"back-off {backoff:.0f}s restarting failed container={c.name} "
                                              f"pod={self.name}_{self.ns}({self.uid})"}}
            self.node.event(self.pod, "Warning", "BackOff", f"Back-off restarting failed container {c.name}")
            self.mark()
            if await self.sleep(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX)
            c.restart_count += 1

    # --- processes ----------------------------------------------------------------------

    async def start_process(self, c: Container) -> None:
        spec = c.spec
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "HOSTNAME": self.name,
            "LANG": "C.UTF-8",
        }
        # The downward API sees the pod as it is about to be: with its address assigned.
        pod = {**self.pod, "status": {**(self.pod.get("status") or {}), "podIP": self.ip,
                                      "podIPs": [{"ip": self.ip}], "hostIP": "127.0.0.1",
                                      "hostIPs": [{"ip": "127.0.0.1"}]}}
        env.update(await envvars.resolve(pod, spec, self.node.get, self.node.service_env))
        command = [envvars.expand(a, env) for a in spec.get("command") or []]
        args = [envvars.expand(a, env) for a in spec.get("args") or []]
        launch = self.node.images.resolve(spec["image"], command, args, self.ip)
        env.update(launch.env)
        c.env = env
        c.workdir = spec.get("workingDir") or "/"
        script = self.mount_script(c)
        log_dir = self.dir / "logs" / c.name
        log_dir.mkdir(parents=True, exist_ok=True)
        log_file = log_dir / f"{c.restart_count}.log"
        unshare = ["unshare", "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            unshare.append("--map-root-user")
        with open(log_file, "ab") as out:
            c.proc = await asyncio.create_subprocess_exec(
                *unshare, "--", "sh", "-c", script, f"{self.name}/{c.name}", *launch.argv,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        self.node.remember_pid(self.uid, c.name, c.proc.pid)
        if self.stopping.is_set():  # deleted while this container was being set up
            signal_group(c.proc.pid, signal.SIGKILL)
        c.started_at = time.monotonic()
        c.state = {"running": {"startedAt": now_iso()}}
        no_startup = "startupProbe" not in spec
        c.started = no_startup
        c.ready = no_startup and "readinessProbe" not in spec
        self.node.event(self.pod, "Normal", "Started", f"Started container {c.name}: {shlex.join(launch.argv)[:300]}")
        self.recompute()

    def mount_script(self, c: Container) -> str:
        lines = ["set -e"]
        created: list[str] = []
        binds: list[tuple[Path, Path, bool]] = []  # source, mountPath, read-only
        empty = set()  # the binds of emptyDir volumes (hostpaths.py)
        empty_dirs = {v["name"] for v in self.pod["spec"].get("volumes") or [] if "emptyDir" in v}
        for m in c.spec.get("volumeMounts") or []:
            if m["name"] in empty_dirs and not m.get("subPath"):
                empty.add(len(binds))
            if m["name"] not in self.volumes.paths:
                raise VolumeError(f"volumeMount {m['name']} names no volume of the pod")
            src = self.volumes.paths[m["name"]]
            if m.get("subPath"):
                src = (src / m["subPath"]).resolve()
                if not src.is_relative_to(self.volumes.paths[m["name"]].resolve()):
                    raise VolumeError(f"subPath {m['subPath']!r} points outside volume {m['name']}")
                if not src.exists():
                    src.mkdir(parents=True)
            dst = Path(m["mountPath"])
            if not dst.is_absolute() or dst == Path("/"):
                raise VolumeError(f"mountPath {m['mountPath']!r} must be an absolute path other than /")
            created += _make_mountpoint(dst, is_file=src.is_file())
            binds.append((src, dst, bool(m.get("readOnly")) or m["name"] in self.volumes.read_only))
        kept = hostpaths.kept_visible([(src, dst) for src, dst, _ in binds], empty, hostpaths.needed())
        for _, path, stash in kept:  # mounted where the volume will carry it (rbind below)
            stash.mkdir(parents=True, exist_ok=True)
            lines.append(f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(stash))}")
        carrying = {i for i, _, _ in kept}
        for i in mount_order([(src, dst) for src, dst, _ in binds]):
            src, dst, read_only = binds[i]
            how = "--rbind" if i in carrying else "--bind"
            lines.append(f"mount {how} {shlex.quote(str(src))} {shlex.quote(str(dst))}")
            if read_only:
                lines.append(f"mount -o remount,bind,ro {shlex.quote(str(dst))}")
        if created:
            self.node.record_mountpoints(created)
        if not Path(c.workdir).is_dir():
            self.node.record_mountpoints(_make_mountpoint(Path(c.workdir), is_file=False))
        lines.append(f"cd {shlex.quote(c.workdir)}")
        lines.append('exec "$@"')
        return "\n".join(lines)

    async def exec_in(self, c: Container, cmd: list[str], timeout: float) -> tuple[int, str]:
        """Run a command inside a running container's mount namespace (exec probes)."""
        if c.proc is None or c.proc.returncode is not None:
            return 1, "container is not running"
        argv = self.node.images.program(c.spec["image"], cmd)
        # Not root: the container's mount namespace belongs to its user namespace; join both.
        userns = ["--user", "--preserve-credentials"] if os.geteuid() != 0 else []
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--target={c.proc.pid}", *userns, "--mount", f"--wd={c.workdir}", "--", *argv,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=c.env, start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            return 1, f"command timed out after {timeout:.0f}s"
        return proc.returncode or 0, out.decode(errors="replace")

    async def kill(self, c: Container, grace: float) -> None:
        """SIGTERM the container's process group, SIGKILL after `grace` seconds. As with a
        kubelet, the terminated state then says Error with exit code 143 or 137."""
        proc = c.proc
        if proc is None or proc.returncode is not None:
            return
        signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=max(grace, 0.0))
        except asyncio.TimeoutError:
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()

    # --- probes -------------------------------------------------------------------------

    def start_probes(self, c: Container) -> list[asyncio.Task]:
        prober = Prober(self.ip or "127.0.0.1", c.spec, self.node.http,
                        lambda cmd, t: self.exec_in(c, cmd, t))
        return [asyncio.create_task(self.probe_loop(c, prober, kind))
                for kind in ("startup", "liveness", "readiness") if f"{kind}Probe" in c.spec]

    async def probe_loop(self, c: Container, prober: Prober, kind: str) -> None:
        probe = c.spec[f"{kind}Probe"]
        period = float(probe.get("periodSeconds", 10))
        success = int(probe.get("successThreshold", 1))
        failure = int(probe.get("failureThreshold", 3))
        while kind != "startup" and not c.started:
            await asyncio.sleep(0.1)
        # initialDelaySeconds counts from the container's start, as in a kubelet.
        delay = c.started_at + float(probe.get("initialDelaySeconds", 0)) - time.monotonic()
        await asyncio.sleep(max(delay, 0.0))
        oks = fails = 0
        while c.proc is not None and c.proc.returncode is None:
            result = await prober.run(probe)
            oks, fails = (oks + 1, 0) if result.ok else (0, fails + 1)
            if kind == "startup":
                if oks >= 1:
                    c.started = True
                    c.ready = "readinessProbe" not in c.spec
                    self.recompute()
                    return
                if fails >= failure:
                    self.node.event(self.pod, "Warning", "Unhealthy", f"Startup probe failed: {result.message}")
                    await self.kill(c, self.grace())
                    return
            elif kind == "liveness":
                if fails >= failure:
                    self.node.event(self.pod, "Warning", "Unhealthy", f"Liveness probe failed: {result.message}")
                    await self.kill(c, self.grace())
                    return
            else:
                new = True if oks >= success else False if fails >= failure or not c.ready else c.ready
                if not result.ok and fails == 1:
                    self.node.event(self.pod, "Warning", "Unhealthy", f"Readiness probe failed: {result.message}")
                if new != c.ready:
                    c.ready = new
                    self.recompute()
            await asyncio.sleep(period)

    def grace(self) -> float:
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    # --- deletion -----------------------------------------------------------------------

    async def terminate(self, delete_object: bool, grace: float | None = None) -> None:
        if grace is None:
            grace = float(self.pod["metadata"].get("deletionGracePeriodSeconds", self.grace()))
        self.stopping.set()
        running = [c for c in self.init_containers + self.containers if c.proc and c.proc.returncode is None]
        if running:
            self.node.event(self.pod, "Normal", "Killing", f"Stopping container(s) "
                                                           f"{', '.join(c.name for c in running)}")
        await asyncio.gather(*(self.kill(c, grace) for c in running))
        for t in self._tasks:
            t.cancel()
        try:
            await asyncio.wait_for(self.main, timeout=10)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self.main.cancel()
        for c in self.containers:
            c.ready = False
        self.recompute()
        self.writer.cancel()
        if not self.gone:  # the last word on this pod, not left to the cancelled writer
            await self.node.patch_pod_status(self.ns, self.name, self.status())
        if delete_object and not self.gone:
            await self.node.delete_pod(self.ns, self.name, self.uid)
        self.node.release(self.uid)
        # Pod-private folders go with the pod; PersistentVolumes and hostPaths live elsewhere.
        await asyncio.to_thread(shutil.rmtree, self.dir, True)

    # --- status -------------------------------------------------------------------------

    def set_condition(self, kind: str, ok: bool, reason: str | None = None, message: str | None = None) -> None:
        status = "True" if ok else "False"
        old = self.conditions.get(kind)
        cond = {"type": kind, "status": status,
                "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == status else now_iso(),
                "lastProbeTime": None}
        if reason and not ok:
            cond["reason"] = reason
        if message and not ok:
            cond["message"] = message
        self.conditions[kind] = cond

    def recompute(self) -> None:
        """Derive phase and conditions from the containers' states, as the kubelet does."""
        cs = self.containers
        all_ready = bool(cs) and all(c.ready for c in cs)
        not_ready = [c.name for c in cs if not c.ready]
        msg = f"containers with unready status: [{' '.join(not_ready)}]" if not_ready else None
        self.set_condition("ContainersReady", all_ready, "ContainersNotReady", msg)
        self.set_condition("Ready", all_ready, "ContainersNotReady", msg)
        terminated = [c for c in cs if "terminated" in c.state]
        if cs and all(c.done for c in cs):
            failed = any(c.state["terminated"]["exitCode"] != 0 for c in terminated)
            self.phase = "Failed" if failed else "Succeeded"
            if self.phase == "Succeeded" or self.restart_policy != "Always":
                for cond in ("Ready", "ContainersReady"):
                    self.set_condition(cond, False, "PodCompleted")
        elif any("running" in c.state or c.restart_count or "terminated" in c.state or c.last_state for c in cs):
            self.phase = "Running"
        self.mark()

    def mark(self) -> None:
        self.dirty.set()

    def status(self) -> dict:
        ip = self.ip
        return {
            "phase": self.phase,
            "conditions": list(self.conditions.values()),
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}] if ip else [],
            "startTime": self.start_time,
            "initContainerStatuses": [c.status(self.uid) for c in self.init_containers] or None,
            "containerStatuses": [c.status(self.uid) for c in self.containers],
        }

    async def write_status(self) -> None:
        """One writer per pod: coalesces bursts of changes into one status patch."""
        while True:
            await self.dirty.wait()
            await asyncio.sleep(0.05)
            self.dirty.clear()
            await self.node.patch_pod_status(self.ns, self.name, self.status())


def mount_order(binds: list[tuple[Path, Path]]) -> list[int]:
    """The order in which to bind-mount (source, mountPath) pairs into one mount namespace:
    parents before children, as container runtimes do, except that a mount over a folder
    holding another mount's source comes after it (the volumes live in the test bed's state
    folder: an emptyDir at /tmp would otherwise hide every volume of a test bed whose state is
    under /tmp). A child mounted under such a mount, from a source it hides, is not handled."""
    def hides(i: int) -> bool:
        return any(j != i and src.is_relative_to(binds[i][1]) for j, (src, _) in enumerate(binds))

    return sorted(range(len(binds)), key=lambda i: (hides(i), len(binds[i][1].parts)))


def _make_mountpoint(dst: Path, is_file: bool) -> list[str]:
    """Create a missing mount point on the host; returns what was created, for `down` to remove."""
    created = []
    missing = []
    p = dst if not is_file else dst.parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        created.append(str(d))
    if is_file and not dst.exists():
        dst.touch()
        created.append(str(dst))
    return created

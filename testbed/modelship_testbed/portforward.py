"""`kubectl port-forward` as a context manager, for tests and the demo.

    with PortForward(kubeconfig, "modelship-demo", "svc/smollm2", 8080) as pf:
        httpx.get(f"{pf.url}/health")

It runs the test bed's kubectl (`kubectl port-forward --address 127.0.0.1 TARGET
[LOCAL]:REMOTE`), learns the local port from kubectl's "Forwarding from 127.0.0.1:NNNN"
line, waits until that port accepts a connection, and on exit stops kubectl (by its own
pid: SIGTERM, then SIGKILL). kubectl's output is read all along (so it never blocks on a
full pipe) and its last lines are kept for error messages (`output()`).

On the test bed, port-forward reaches pods on the local node only (kwok's pods run
nothing); the local node's kubelet port is `kubelet-streaming`.
"""

from __future__ import annotations

import collections
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

from . import procs

_FORWARDING = re.compile(r"^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)")


class PortForwardError(RuntimeError):
    """kubectl port-forward did not get ready, or ended early; the message carries its output."""


class PortForward:
    def __init__(self, kubeconfig: str | Path | None, namespace: str, target: str, remote_port: int, *,
                 local_port: int = 0, kubectl: str | Path | None = None, timeout: float = 30.0):
        """`target`: pod/NAME, svc/NAME, deploy/NAME, ... (kubectl resolves it to one pod);
        `kubeconfig` None: the test bed's; `local_port` 0: one the system picks."""
        from .paths import kubeconfig_path

        self.kubeconfig = str(kubeconfig or kubeconfig_path())
        self.namespace, self.target, self.remote_port = namespace, target, remote_port
        self.local_port = local_port
        self.kubectl = str(kubectl) if kubectl else None
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.ready_seconds: float | None = None  # from start to accepting, measured
        self._lines: collections.deque[str] = collections.deque(maxlen=50)
        self._forwarding = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def output(self) -> str:
        """kubectl's last lines (stdout and stderr)."""
        return "\n".join(self._lines)

    def argv(self) -> list[str]:
        kubectl = self.kubectl
        if kubectl is None:
            from . import binaries

            kubectl = str(binaries.path("kubectl"))
        ports = f"{self.local_port or ''}:{self.remote_port}"
        return [kubectl, f"--kubeconfig={self.kubeconfig}", "-n", self.namespace, "port-forward",
                "--address", "127.0.0.1", self.target, ports]

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self._lines.append(line)
            m = _FORWARDING.match(line)
            if m and not self._forwarding.is_set():
                self.local_port = int(m.group(1))
                self._forwarding.set()

    def start(self) -> "PortForward":
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")
        self._reader = threading.Thread(target=self._read, name=f"kubectl-port-forward-{self.proc.pid}",
                                        daemon=True)
        self._reader.start()
        try:
            deadline = t0 + self.timeout
            while not self._forwarding.wait(0.05):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise PortForwardError(f"kubectl port-forward {self.target} printed no 'Forwarding from' "
                                           f"line in {self.timeout:.0f}s; its output:\n{self.output()}")
            while not self._accepts():
                self._check_alive()
                if time.monotonic() > deadline:
                    raise PortForwardError(f"127.0.0.1:{self.local_port} (kubectl port-forward {self.target}) "
                                           f"accepts nothing after {self.timeout:.0f}s; its output:\n{self.output()}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.monotonic() - t0
        return self

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            if self._reader:
                self._reader.join(2)
            raise PortForwardError(f"kubectl port-forward {self.target} {self.remote_port} exited with code "
                                   f"{self.proc.returncode}:\n{self.output()}")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.local_port), timeout=1):
                return True
        except OSError:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, 5.0)
            if self._reader:
                self._reader.join(2)

    def __enter__(self) -> "PortForward":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

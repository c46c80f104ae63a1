"""Processes the test bed starts: dying with their parent, signalling their groups, and
records of them that are safe against pid reuse (a pid is acted on only while the process
with that pid has the start time recorded with it)."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1
# Loaded once here: preexec_fn runs between fork and exec, where loading a library
# (taking locks another thread may hold) could deadlock the child.
_prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def signal_group(pid: int, sig: int) -> None:
    """Signal a process group, tolerating one that is already gone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> int:
    """Signal a process we started and wait for it; one that outlives `timeout` is killed, never
    left running. Returns its exit code (-9 after a kill)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def collect_stderr(proc: subprocess.Popen) -> Callable[[], str]:
    """Read a started process's stderr (a text pipe) as it comes, so that a chatty process
    never blocks on a pipe nobody reads (64 KiB fill in seconds). Returns what gives all of it,
    once the process has exited (call it after `stop`)."""
    parts: list[str] = []
    reader = threading.Thread(target=lambda: parts.extend(proc.stderr), name=f"stderr-{proc.pid}", daemon=True)
    reader.start()

    def said() -> str:
        proc.wait()
        reader.join(10)
        return "".join(parts)

    return said


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record(path: Path, pid: int) -> None:
    path.write_text(f"{pid} {start_time(pid)}")


def kill_if_same(pid: int, started: str | None) -> bool:
    """SIGKILL the process group of `pid` if that process is still the one that started at
    `started`; True when it was."""
    if started is None or start_time(pid) != started:
        return False
    signal_group(pid, signal.SIGKILL)
    return True


def kill_recorded(folder: Path) -> int:
    """SIGKILL the process group of every still-living recorded process; clear the records."""
    killed = 0
    for f in folder.glob("*") if folder.is_dir() else []:
        try:
            pid_s, started = f.read_text().split()
            pid = int(pid_s)
        except (OSError, ValueError):
            f.unlink(missing_ok=True)
            continue
        killed += kill_if_same(pid, started)
        f.unlink(missing_ok=True)
    return killed


# --- the supervisors (the cluster's, and an add-on's): one pid file and status.json each -----

SUPERVISOR = "modelship_testbed.supervisor"


def supervisor_pid(home: Path, marker: str = "") -> int | None:
    """The pid in <home>/supervisor.pid while that process is a test-bed supervisor (with
    `marker` in its command line too: an add-on's name), else None."""
    try:
        pid = int((home / "supervisor.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError):
        return None
    return pid if SUPERVISOR in cmdline and marker in cmdline else None


def read_status(home: Path) -> dict | None:
    try:
        return json.loads((home / "status.json").read_text())
    except (OSError, ValueError):
        return None


def stop_supervisor(home: Path, timeout: float, marker: str = "") -> bool:
    """SIGTERM the supervisor of `home` (it stops its components in order), wait up to `timeout`
    seconds, then SIGKILL its group; and SIGKILL any component the status file recorded that
    outlived it. True when a supervisor was running."""
    pid = supervisor_pid(home, marker)
    status = read_status(home) or {}
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:  # (gone since it was found)
            pass
        deadline = time.monotonic() + timeout
        while supervisor_pid(home, marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        if supervisor_pid(home, marker):
            signal_group(pid, signal.SIGKILL)
    for c in status.get("components", {}).values():
        if c.get("pid"):
            kill_if_same(c["pid"], c.get("started"))
    return pid is not None


def component_lines(status: dict, width: int) -> list[str]:
    """`modelship testbed status`'s line for each component of a supervisor."""
    lines = []
    for name, c in status.get("components", {}).items():
        extra = f", {c['restarts']} restarts" if c["restarts"] else ""
        lines.append(f"  {name:<{width}} {c['state']:<10} pid {c['pid']}{extra}")
    return lines

"""Processes the test bed starts: dying with their parent, signalling their groups, and
records of them that are safe against pid reuse (a pid is acted on only while the process
with that pid has the start time recorded with it)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
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

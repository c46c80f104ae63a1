"""Records of processes the test bed started, safe against pid reuse: a pid is acted on only
while the process with that pid has the start time recorded with it."""

from __future__ import annotations

import signal
from pathlib import Path

from .supervisor import signal_group


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record(path: Path, pid: int) -> None:
    path.write_text(f"{pid} {start_time(pid)}")


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
        if start_time(pid) == started:
            signal_group(pid, signal.SIGKILL)
            killed += 1
        f.unlink(missing_ok=True)
    return killed

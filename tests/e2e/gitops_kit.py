"""What the GitOps tests drive: a git working copy pushing to the test bed's git daemon, the
Argo CD Applications read through the API server, and a watcher that records every state
Argo CD shows, so a test can say that nothing ever went OutOfSync."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ARGO = ("argoproj.io", "v1alpha1", "argocd", "applications")


class Git:
    """A working copy whose commits are pushed into a bare repository that the test bed's git
    daemon serves to Argo CD as `url`."""

    def __init__(self, url: str, push: Path, work: Path):
        self.url, self.push, self.work = url, push, work
        work.mkdir(parents=True, exist_ok=True)
        self.run("init", "-q", "-b", "main")

    def run(self, *args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=modelship tests", "-c", "user.email=tests@modelship.invalid",
                               *args], cwd=self.work, check=True, capture_output=True, text=True).stdout

    def write(self, rel: str, text: str) -> None:
        (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.work / rel).write_text(text)

    def commit(self, message: str) -> str:
        """Commit everything and push; the new commit's sha."""
        self.run("add", "-A")
        self.run("commit", "-q", "-m", message)
        self.run("push", "-q", str(self.push), "main")
        return self.run("rev-parse", "HEAD").strip()


@dataclass
class Seen:
    t: float
    app: str
    sync: str
    health: str
    revision: str
    reconciled_at: str
    out_of_sync: list[str]  # the resources Argo CD compared as OutOfSync
    models: dict[str, tuple[str, str]]  # ModelDeployment -> (health, message) as Argo CD reads it


@dataclass
class Watch:
    """Polls the Applications every `interval` seconds in a thread of its own; while `strict`
    holds for an app, an OutOfSync state of it is a drift (Unknown, a comparison that failed
    for a moment, is kept apart in `unknown`)."""

    custom: object  # kubernetes.client.CustomObjectsApi
    apps: list[str]
    interval: float = 0.25
    seen: list[Seen] = field(default_factory=list)
    strict: set[str] = field(default_factory=set)
    drifts: list[Seen] = field(default_factory=list)
    unknown: list[Seen] = field(default_factory=list)
    refreshes_asked: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "Watch":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)

    def get(self, app: str) -> dict:
        return self.custom.get_namespaced_custom_object(*ARGO[:3], ARGO[3], app)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for app in self.apps:
                try:
                    s = seen_of(app, self.get(app))
                except Exception:  # (a moment without the API server is not a state of the app)
                    continue
                self.seen.append(s)
                if app in self.strict and s.sync == "OutOfSync":
                    self.drifts.append(s)
                elif app in self.strict and s.sync != "Synced":
                    self.unknown.append(s)

    def latest(self, app: str) -> Seen | None:
        return next((s for s in reversed(self.seen) if s.app == app), None)

    def refresh(self, app: str, kind: str = "hard") -> None:
        """Argo CD's refresh: compare again (hard: with the manifests rendered anew from git)."""
        self.custom.patch_namespaced_custom_object(*ARGO[:3], ARGO[3], app, {
            "metadata": {"annotations": {"argocd.argoproj.io/refresh": kind}}})
        self.refreshes_asked += 1

    def refreshes(self, app: str, since: float = 0.0) -> int:
        """How many comparisons Argo CD made (distinct reconciledAt) since `since`."""
        return len({s.reconciled_at for s in self.seen if s.app == app and s.t >= since and s.reconciled_at})

    def observations(self, app: str, since: float = 0.0) -> int:
        return sum(1 for s in self.seen if s.app == app and s.t >= since)


def seen_of(app: str, obj: dict) -> Seen:
    st = obj.get("status") or {}
    resources = st.get("resources") or []
    return Seen(
        time.monotonic(), app, (st.get("sync") or {}).get("status", ""), (st.get("health") or {}).get("status", ""),
        (st.get("sync") or {}).get("revision", ""), st.get("reconciledAt", ""),
        [f"{r.get('kind')}/{r.get('name')}" for r in resources if r.get("status") == "OutOfSync"],
        {r["name"]: ((r.get("health") or {}).get("status", ""), (r.get("health") or {}).get("message", ""))
         for r in resources if r.get("kind") == "ModelDeployment"})

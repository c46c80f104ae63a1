"""What `scale.py` reads from the operator itself: its Prometheus metrics (CPU, memory, the
reconciles and their time) and its log (when each ModelDeployment passed each step of its
path to Ready).
"""

from __future__ import annotations

import os
import re
import statistics
from collections import Counter
from datetime import datetime

import psutil

# The operator's metrics that scale.py compares between two moments.
METRICS = ("process_cpu_seconds_total", "process_resident_memory_bytes", "modelship_reconcile_duration_seconds_sum",
           "modelship_reconcile_duration_seconds_count")


def scrape(text: str) -> dict[str, float]:
    """The METRICS from a /metrics text, and modelship_reconciles_total by result."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        if name in METRICS or name.startswith("modelship_reconciles_total{"):
            out[name] = float(value)
    return out


def cpu_vs_wait(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Between two scrapes `wall` seconds apart: the operator's CPU seconds, the reconciles and
    the seconds they took (summed: up to 16 run at once), and from them the most of that
    reconcile time that can have been the operator's own CPU (all of its CPU, watches and
    Events included, counted against the reconciles: an upper bound). The rest was spent
    waiting: on the API server, or for the event loop."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in METRICS}
    cpu, rec_s, recs = (d["process_cpu_seconds_total"], d["modelship_reconcile_duration_seconds_sum"],
                        d["modelship_reconcile_duration_seconds_count"])
    return {"wall": wall, "cpu": cpu, "cpu share of a core": cpu / wall if wall else 0.0, "reconciles": recs,
            "reconcile seconds": rec_s, "mean reconcile": rec_s / recs if recs else 0.0,
            "in flight": rec_s / wall if wall else 0.0, "cpu bound of reconcile time": min(1.0, cpu / rec_s) if rec_s else 0.0,
            "rss": after.get("process_resident_memory_bytes", 0.0) / 2**20}


def describe(part: str, f: dict[str, float]) -> str:
    return (f"  {part}: {f['wall']:.1f} s, operator CPU {f['cpu']:.1f} s ({f['cpu share of a core']:.0%} of a core); "
            f"{f['reconciles']:.0f} reconciles, {f['reconcile seconds']:.0f} s in all (mean {f['mean reconcile'] * 1e3:.0f} ms, "
            f"{f['in flight']:.1f} at a time): at most {f['cpu bound of reconcile time']:.0%} of it the operator's CPU, "
            f"the rest waiting on the API server (or the event loop); RSS then {f['rss']:.0f} MiB")


class CpuByProcess:
    """The CPU seconds every process on the machine used between `__init__` and `took()`, by
    name (the test bed's API server, etcd, controllers and kwoks, the operator, this bench):
    where the machine's cores went. A process that ended in between is not counted."""

    def __init__(self) -> None:
        self.start, self.before = psutil.cpu_times(), self._now()

    @staticmethod
    def _now() -> dict[int, tuple[str, float]]:
        out = {}
        for p in psutil.process_iter(["name", "cmdline", "cpu_times"]):
            t, cmd = p.info["cpu_times"], p.info["cmdline"] or []
            if t is None:
                continue
            name = p.info["name"] or "?"
            if name.startswith("python") or name == "modelship":  # which Python program it runs
                name = next((os.path.basename(a) for a in cmd[1:] if not a.startswith("-")), name)
                name = {"operator": "modelship operator"}.get(name, name)
            out[p.pid] = (name, t.user + t.system)
        return out

    def took(self, wall: float) -> str:
        now, end = self._now(), psutil.cpu_times()
        used = Counter()
        for pid, (name, cpu) in now.items():
            used[name] += cpu - (self.before[pid][1] if pid in self.before and self.before[pid][0] == name else 0.0)
        busy = sum(getattr(end, f) - getattr(self.start, f) for f in ("user", "system", "nice", "irq", "softirq"))
        idle = (end.idle - self.start.idle) + (getattr(end, "iowait", 0.0) - getattr(self.start, "iowait", 0.0))
        top = ", ".join(f"{n} {c:.0f} s" for n, c in used.most_common(8) if c >= 0.5)
        return (f"  the machine's CPU over those {wall:.1f} s: {busy:.0f} s busy, {idle:.0f} s idle "
                f"({busy / (busy + idle):.0%} busy of {psutil.cpu_count()} cores); by process: {top}")


# The operator's log lines (cli.py's format) that mark a ModelDeployment's steps.
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ modelship: (.*)$")
WROTE = re.compile(r"^(\w+) (Service|Job|Deployment) (\S+) \(for ModelDeployment (\S+)/(\S+)\)$")
PHASE = re.compile(r"^ModelDeployment (\S+)/(\S+) is (\w+)$")
# (label, from, to): the steps of a ModelDeployment's path, as the operator's log shows them
# ("[cluster]": the moments the API server's objects record, to the second).
# ModelDeployments on one claim share one Job: "Job applied" is the first to make or join it.
STEPS = (("created → Service and Job applied (operator)", "start", "Job"),
         ("Job applied → Job complete (cluster: its pod scheduled, run by kwok; the Job controller)", "Job",
          "Job complete"),
         ("Job complete → Deployment applied (operator: sees it, acts)", "Job complete", "Deployment"),
         ("Deployment applied → Available (cluster: 2 pods scheduled, Running, Ready)", "Deployment", "Available"),
         ("Available → Ready in the status (operator: sees the pods and endpoints, writes it)", "Available", "Ready"))


def cluster_times(api, namespace: str) -> dict[str, dict[str, float]]:
    """When each ModelDeployment's download Job completed (the Job its status says completed:
    ModelDeployments on one claim share one) and its Deployment became Available, as those
    objects record it (whole seconds)."""
    from kubernetes import client

    out: dict[str, dict[str, float]] = {}
    done = {job.metadata.name: job.status.completion_time.timestamp()
            for job in client.BatchV1Api(api).list_namespaced_job(
                namespace, label_selector="app.kubernetes.io/managed-by=modelship").items
            if job.status.completion_time is not None}
    for md in client.CustomObjectsApi(api).list_namespaced_custom_object(
            "modelship.io", "v1alpha1", namespace, "modeldeployments")["items"]:
        job = ((md.get("status") or {}).get("download") or {}).get("completedJob")
        if job in done:
            out.setdefault(md["metadata"]["name"], {})["Job complete"] = done[job]
    for dep in client.AppsV1Api(api).list_namespaced_deployment(namespace).items:
        for c in dep.status.conditions or []:
            if c.type == "Available" and c.status == "True":
                out.setdefault(dep.metadata.name, {})["Available"] = c.last_transition_time.timestamp()
    return out


def steps(log: str, created: dict[str, float], cluster: dict[str, dict[str, float]] | None = None
          ) -> list[tuple[str, float, float, int]]:
    """(step, median s, max s, how many) over the ModelDeployments, from the operator's log and
    the `cluster_times`; `created` is each one's create time (epoch seconds)."""
    seen: dict[str, dict[str, float]] = {name: {"start": t, **(cluster or {}).get(name, {})}
                                         for name, t in created.items()}
    for line in log.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        w, p = WROTE.match(m.group(2)), PHASE.match(m.group(2))
        if w and w.group(5) in seen:
            seen[w.group(5)].setdefault(w.group(2), at)
        elif p and p.group(2) in seen and p.group(3) == "Ready":
            seen[p.group(2)].setdefault("Ready", at)
    out = []
    for label, a, b in STEPS:
        spans = [s[b] - s[a] for s in seen.values() if a in s and b in s]
        if spans:
            out.append((label, statistics.median(spans), max(spans), len(spans)))
    return out


def request_latency(user: str, since: float, until: float) -> list[tuple[str, int, float, float, float]]:
    """The operator's requests between two moments (epoch seconds), watches left out, by verb and
    resource, as the API server's audit log times them (received to answered): (what, how many,
    median s, 90th percentile s, seconds in all), the longest in all first."""
    from modelship_testbed import audit

    by: dict[str, list[float]] = {}
    for e in audit.events(audit.log_files(), containing=f'"{user}"'):
        if e.get("stage") != "ResponseComplete" or e.get("verb") == "watch":
            continue
        t0, t1 = (datetime.fromisoformat(e[k].replace("Z", "+00:00")).timestamp()
                  for k in ("requestReceivedTimestamp", "stageTimestamp"))
        if since <= t0 <= until:
            r = e.get("objectRef") or {}
            what = f"{e['verb']} {r.get('resource', '')}{'/' + r['subresource'] if r.get('subresource') else ''}"
            by.setdefault(what, []).append(t1 - t0)
    rows = [(what, len(v), statistics.median(v), sorted(v)[int(0.9 * len(v))], sum(v)) for what, v in by.items()]
    return sorted(rows, key=lambda r: -r[4])

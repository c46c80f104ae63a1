"""Two replicas of the operator as the chart installs them: exactly one works, and when it goes
(killed, or stopped for a rollout) the other takes over without anything being done twice."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from ..conftest import wait_for
from .conftest import TINY_SHA, children, seed_volume, wait_phase
from .test_operator import get, job_names, tiny

pytestmark = [pytest.mark.integration, pytest.mark.localnode, pytest.mark.slow]


def metric(ip: str, name: str) -> float:
    """The sum of a metric's samples on one replica (0 when it has none)."""
    text = httpx.get(f"http://{ip}:9090/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#") and line[len(name)] in " {")


def roles(operator) -> dict[str, tuple[float, float]]:
    """Each running replica: (leading, reconciles so far)."""
    return {p["metadata"]["name"]: (metric(p["status"]["podIP"], "modelship_operator_leader"),
                                    metric(p["status"]["podIP"], "modelship_reconciles_total"))
            for p in operator.pods()}


def holder(cluster, operator) -> str:
    lease = json.loads(cluster.kubectl("get", "lease", f"{operator.release}-operator", "-n", operator.namespace,
                                       "-o", "json"))
    return (lease["spec"].get("holderIdentity") or "").rsplit("_", 1)[0]


def one_leader(operator) -> tuple[str, dict] | None:
    """(the leader, every replica's roles) once two replicas run and exactly one leads."""
    now = roles(operator)
    leaders = [name for name, (leading, _) in now.items() if leading == 1]
    return (leaders[0], now) if len(now) == 2 and len(leaders) == 1 else None


def takeover(cluster, operator, old: str, timeout: float) -> tuple[str, float]:
    """Wait until another replica holds the Lease and leads; (its name, seconds it took)."""
    started = time.monotonic()
    new = wait_for(lambda: (h := holder(cluster, operator)) and h != old and roles(operator).get(h, (0,))[0] == 1
                   and h, timeout, f"a standby to take over from {old}", operator.log)
    return new, time.monotonic() - started


def test_one_replica_works_and_a_standby_takes_over_without_doing_anything_twice(cluster, namespace, operator,
                                                                                  kwok_pools):
    operator.start(pools=kwok_pools, replicas=2)
    leader, now = wait_for(lambda: one_leader(operator), 60, "two replicas, one of them leading", operator.log)
    assert holder(cluster, operator) == leader
    cluster.apply(tiny("model-a"), namespace)
    seed_volume(cluster, namespace, "model-a-weights", "modelship-test/tiny-llama", TINY_SHA,
                {"config.json": b"{}", "model.safetensors": b"abc"})
    wait_phase(cluster, operator, "model-a", "Ready", timeout=120)
    standby = next(name for name in now if name != leader)
    # The standby watched nothing and reconciled nothing while the leader worked.
    now = roles(operator)
    assert now[standby] == (0, 0), now
    assert now[leader][1] > 0, now
    before = {"deployment": get(cluster, "deployment", "model-a", namespace)["metadata"]["resourceVersion"],
              "jobs": job_names(cluster, namespace), "children": children(cluster, namespace, "model-a")}

    # Killed (no chance to release the Lease): the standby waits out the lease, then leads.
    cluster.kubectl("delete", "pod", leader, "-n", namespace, "--grace-period=0", "--force")
    new, killed_took = takeover(cluster, operator, leader, timeout=60)
    # The Lease goes to whichever candidate asks first once it expires: mostly the standby, but
    # the killed pod's replacement, started within the lease's 15 s, may ask first.
    assert new != leader and new in {p["metadata"]["name"] for p in operator.pods()}, (new, leader, standby)
    # It reconciles what exists (the phase gauge is written at the end of a reconcile) and
    # rewrites nothing: the same Deployment version, no second download Job, the same children.
    wait_for(lambda: metric(next(p["status"]["podIP"] for p in operator.pods() if p["metadata"]["name"] == new),
                            'modelship_modeldeployments{phase="Ready"}') == 1, 60, "the new leader to reconcile")
    assert get(cluster, "deployment", "model-a", namespace)["metadata"]["resourceVersion"] == before["deployment"]
    assert job_names(cluster, namespace) == before["jobs"]
    assert children(cluster, namespace, "model-a") == before["children"]
    # The Deployment replaced the killed pod: it stands by.
    leader, now = wait_for(lambda: one_leader(operator), 60, "the replacement replica to stand by")
    assert leader == new

    # Stopped (a rollout, a drain): the leader releases the Lease and the standby leads at once.
    cluster.kubectl("delete", "pod", leader, "-n", namespace, "--wait=false")
    newer, stopped_took = takeover(cluster, operator, leader, timeout=30)
    assert stopped_took < killed_took, (stopped_took, killed_took)
    # A spec change is done once, by the new leader.
    cluster.kubectl("patch", "md", "model-a", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":2}}')
    wait_for(lambda: get(cluster, "deployment", "model-a", namespace)["spec"]["replicas"] == 2, 60,
             "the new leader to scale the Deployment")
    print(f"failover: killed leader {killed_took:.1f} s (lease 15 s), stopped leader {stopped_took:.1f} s")

"""Faults on the test bed: the operator killed over and over at random points of its
reconciles, while the specs change under it, converges with no duplicate and no orphaned
child (issue 19, "Faults")."""

from __future__ import annotations

import json
import random
import signal
import time

import pytest

from ..conftest import wait_for
from .conftest import TINY_SHA, md_status, seed_volume

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KINDS = ("deployments", "services", "jobs", "persistentvolumeclaims")


def tiny(name: str, gguf: bool, parallel: int = 1, replicas: int = 1) -> dict:
    repo = "modelship-test/tiny-llama-GGUF" if gguf else "modelship-test/tiny-llama"
    spec = {"model": {"repo": repo}, "replicas": replicas, "storage": {"existingClaim": "preloaded"}}
    if gguf:
        spec["serving"] = {"parallel": parallel}
    return {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": spec}


def change(cluster, namespace: str, wanted: dict[str, dict], name: str, rng: random.Random) -> None:
    """A random edit of one ModelDeployment: its replicas, its engine's settings, or deleted
    and made again (a new uid: its old children must go, not be adopted)."""
    move = rng.choice(("replicas", "replicas", "parallel", "recreate"))
    gguf = wanted[name]["spec"]["model"]["repo"].endswith("GGUF")
    if move == "recreate":
        cluster.kubectl("delete", "md", name, "-n", namespace, "--wait=false")
        wait_for(lambda: f"/{name}\n" not in cluster.kubectl("get", "md", "-n", namespace, "-o", "name") + "\n",
                 30, f"{name} to go")
        wanted[name] = tiny(name, gguf=gguf)
    elif move == "parallel" and gguf:
        wanted[name] = tiny(name, gguf=True, parallel=rng.randint(2, 4), replicas=wanted[name]["spec"]["replicas"])
    else:
        wanted[name]["spec"]["replicas"] = rng.randint(0, 3)
    cluster.apply(wanted[name], namespace)


def owned(cluster, namespace: str) -> dict[str, list[tuple[str, str, str]]]:
    """Per kind, every object the operator labels as a ModelDeployment's: (its name, the
    ModelDeployment it names, the uid its owner reference points at)."""
    out = {}
    for kind in KINDS:
        items = json.loads(cluster.kubectl("get", kind, "-n", namespace, "-l", "modelship.io/deployment",
                                           "-o", "json"))["items"]
        out[kind] = sorted((i["metadata"]["name"], i["metadata"]["labels"]["modelship.io/deployment"],
                            next((o["uid"] for o in i["metadata"].get("ownerReferences") or []
                                  if o["kind"] == "ModelDeployment"), ""))
                           for i in items if not i["metadata"].get("deletionTimestamp"))
    return out


def converged(cluster, namespace: str, wanted: dict[str, dict]) -> str | None:
    """None when every wanted ModelDeployment is Ready at its generation with what its spec
    asks for; else what is not yet so."""
    mds = {m["metadata"]["name"]: m for m in json.loads(cluster.kubectl("get", "md", "-n", namespace, "-o",
                                                                        "json"))["items"]}
    if sorted(mds) != sorted(wanted):
        return f"ModelDeployments {sorted(mds)}, wanted {sorted(wanted)}"
    for name, m in mds.items():
        st = m.get("status") or {}
        if st.get("observedGeneration") != m["metadata"]["generation"] or st.get("phase") != "Ready":
            return f"{name}: {st.get('phase')} at {st.get('observedGeneration')}/{m['metadata']['generation']}"
        dep = json.loads(cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "json"))
        if dep["spec"]["replicas"] != wanted[name]["spec"]["replicas"]:
            return f"{name}: Deployment at {dep['spec']['replicas']} replicas"
    return None


@pytest.mark.localnode
@pytest.mark.timeout(900)
def test_the_operator_killed_twenty_times_mid_reconcile_converges_without_duplicates_or_orphans(
        cluster, namespace, local_node, local_operator, kwok_pools):
    rng = random.Random(19)
    op = local_operator
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "preloaded"},
                   "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
                  namespace)
    seed_volume(cluster, namespace, "preloaded", "modelship-test/tiny-llama", TINY_SHA,
                {"config.json": b"{}", "model.safetensors": b"abc"})
    seed_volume(cluster, namespace, "preloaded", "modelship-test/tiny-llama-GGUF", TINY_SHA,
                {"tiny.Q4_K_M.gguf": b"gguf"})
    wanted = {f"m{i}": tiny(f"m{i}", gguf=i % 2 == 1) for i in range(4)}
    for m in wanted.values():
        cluster.apply(m, namespace)
    kills, failpoint_kills, rounds = 0, 0, 0
    started = time.monotonic()
    while failpoint_kills < 20 and rounds < 45:
        rounds += 1
        # Something for the next reconciles to do: a spec changed, or a model deleted and made again.
        for name in rng.sample(sorted(wanted), 2):
            change(cluster, namespace, wanted, name, rng)
        if rounds % 4 == 0:  # SIGKILL at a random moment (starting, reconciling or idle)
            op.start(pools=kwok_pools)
            time.sleep(rng.uniform(0.5, 4.0))
            op.stop(signal.SIGKILL)
        else:  # killed abruptly (137) right after its 1st to 3rd child write: inside a reconcile
            op.start(pools=kwok_pools, MODELSHIP_FAILPOINT_EXIT_AFTER_WRITES=str(rng.randint(1, 2)))
            try:
                op.proc.wait(timeout=20)
            except Exception:  # fewer writes than that were needed: kill it anyway
                op.stop(signal.SIGKILL)
            else:
                assert op.proc.returncode == 137, op.log()[-2000:]
                failpoint_kills += 1
        kills += 1
        print(f"round {rounds}: {kills} kills, {failpoint_kills} mid-reconcile, {time.monotonic() - started:.0f} s")
    print(f"{kills} kills ({failpoint_kills} at the fail point, mid-reconcile after a child write) in "
          f"{rounds} rounds, {time.monotonic() - started:.0f} s")
    assert failpoint_kills >= 20, failpoint_kills

    op.start(pools=kwok_pools)
    wait_for(lambda: converged(cluster, namespace, wanted) is None, 240, "every ModelDeployment to converge",
             lambda: str(converged(cluster, namespace, wanted)) + "\n" + op.log()[-3000:])
    mds = {m["metadata"]["name"]: m["metadata"]["uid"]
           for m in json.loads(cluster.kubectl("get", "md", "-n", namespace, "-o", "json"))["items"]}
    children = owned(cluster, namespace)
    # One Deployment and one Service per ModelDeployment, named after it; no Job of its own (those
    # on the pre-loaded claim are shared, below); no claim of its own (the weights are on that one).
    assert [(n, md) for n, md, _ in children["deployments"]] == [(n, n) for n in sorted(mds)], children
    assert [(n, md) for n, md, _ in children["services"]] == [(n, n) for n in sorted(mds)], children
    assert children["persistentvolumeclaims"] == [], children
    assert children["jobs"] == [], children["jobs"]
    # The Jobs on the pre-loaded claim are shared: one per repo@sha at most (two repos here), each
    # owned by ModelDeployments that exist (the garbage collector drops the references to gone ones).
    live = set(mds.values())

    def claim_jobs() -> list[tuple[str, set[str]]]:
        items = json.loads(cluster.kubectl("get", "jobs", "-n", namespace, "-l", "modelship.io/claim=preloaded",
                                           "-o", "json"))["items"]
        return [(i["metadata"]["name"], {o["uid"] for o in i["metadata"].get("ownerReferences") or []})
                for i in items if not i["metadata"].get("deletionTimestamp")]

    wait_for(lambda: all(uids and uids <= live for _, uids in claim_jobs()), 60,
             "the claim's Jobs to be owned by ModelDeployments that exist only", lambda: str(claim_jobs()))
    assert len(claim_jobs()) <= 2, claim_jobs()
    # No orphan: every child is owned by the ModelDeployment of its label, as it is now.
    orphans = [(kind, n, md) for kind, objs in children.items() for n, md, uid in objs if mds.get(md) != uid]
    assert orphans == [], orphans
    # The serving pods match the replicas asked for, on the pool each engine belongs to.
    for name, m in wanted.items():
        dep = json.loads(cluster.kubectl("get", "deployment", name, "-n", namespace, "-o", "json"))
        args = dep["spec"]["template"]["spec"]["containers"][0].get("args") or []
        if "parallel" in (m["spec"].get("serving") or {}):
            assert args[args.index("--parallel") + 1] == str(m["spec"]["serving"]["parallel"]), args
    assert md_status(cluster, namespace, "m0")["phase"] == "Ready"

"""A serving pod's change starts a reconcile only when it changes what the operator reads of
the pod (`facts.serving_pod_news`): a rollout's pods starting and turning Ready (which their
Deployment's status says, and is watched too) are no news of their own."""

from __future__ import annotations

import asyncio
import copy
import types

import kopf
from hypothesis import given, settings
from hypothesis import strategies as st

from modelship.manifests import COMPONENT, DEPLOYMENT_LABEL, MANAGED_BY, REPO, REVISION
from modelship.reconcile import handlers
from modelship.reconcile.cache import WatchCache
from modelship.reconcile.facts import crash_looping, pod_problems, serving_node, serving_pod_news, unschedulable
from modelship.reconcile.observe import volume_readers

WAITING = st.sampled_from([None, "ContainerCreating", "PodInitializing", "CrashLoopBackOff", "ErrImagePull"])


@st.composite
def pods(draw) -> dict:
    def condition(type_: str) -> dict | None:
        if not draw(st.booleans()):
            return None
        return {"type": type_, "status": draw(st.sampled_from(["True", "False"])),
                "reason": draw(st.sampled_from(["Unschedulable", "SchedulerError", "PodCompleted"])),
                "message": draw(st.sampled_from(["0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                                                 "0/3 nodes are available: 3 node(s) had taints.", ""]))}

    containers = []
    for _ in range(draw(st.integers(0, 2))):
        reason = draw(WAITING)
        state = {"waiting": {"reason": reason, "message": draw(st.sampled_from(["", "back-off 10s"]))}} if reason \
            else draw(st.sampled_from([{"running": {"startedAt": "2026-12-01T00:00:00Z"}},
                                       {"terminated": {"exitCode": 1}}, {}]))
        last = draw(st.sampled_from([{}, {"terminated": {"exitCode": 137}}, {"terminated": {"exitCode": 1}}]))
        containers.append({"name": "llamacpp", "ready": draw(st.booleans()), "started": draw(st.booleans()),
                           "restartCount": draw(st.integers(0, 3)), "state": state, "lastState": last})
    notes = {k: v for k, v in ((REPO, draw(st.sampled_from([None, "org/a", "org/b"]))),
                               (REVISION, draw(st.sampled_from([None, "a" * 40, "b" * 40])))) if v}
    return {
        "metadata": {"name": draw(st.sampled_from(["m-1", "m-2"])), "namespace": "ns", "uid": "u",
                     "labels": {DEPLOYMENT_LABEL: draw(st.sampled_from(["m", "other"])), COMPONENT: "server"},
                     "annotations": notes,
                     **({"deletionTimestamp": "2026-12-01T00:00:00Z"} if draw(st.booleans()) else {})},
        "spec": {"nodeName": draw(st.sampled_from([None, "n1", "n2"])),
                 "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": draw(
                     st.sampled_from(["weights", "other"]))}}]},
        "status": {"phase": draw(st.sampled_from([None, "Pending", "Running", "Succeeded", "Failed"])),
                   "conditions": [c for c in (condition("PodScheduled"), condition("Ready")) if c],
                   "containerStatuses": containers,
                   "podIP": draw(st.sampled_from([None, "10.0.0.1"]))},
    }


def read(pod: dict) -> tuple:
    """What the operator's readers make of the pod."""
    in_use, node = volume_readers("weights", [copy.deepcopy(pod)], set())
    return (pod["metadata"]["labels"].get(DEPLOYMENT_LABEL), pod_problems([pod]), unschedulable([pod]),
            crash_looping([pod]), serving_node([pod]), in_use, node,
            (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))


@settings(max_examples=3000, deadline=None)
@given(pods(), pods())
def test_a_change_the_readers_see_is_news(a, b):
    if read(a) != read(b):
        assert serving_pod_news(a) != serving_pod_news(b)


def pod(**status) -> dict:
    return {"metadata": {"name": "m-1", "namespace": "ns", "uid": "u", "resourceVersion": str(status.pop("rv")),
                         "labels": {DEPLOYMENT_LABEL: "m", COMPONENT: "server", MANAGED_BY: "modelship"}},
            "spec": {"nodeName": status.pop("node", None)}, "status": status}


def changes(events: list[dict]) -> list[bool]:
    """Whether each event (the first ADDED, the rest MODIFIED) of one pod enqueued its model."""
    cache, seen = WatchCache(("Pod",)), []
    controller = types.SimpleNamespace(kube=types.SimpleNamespace(cache=cache),
                                       enqueue_soon=lambda ns, name: seen.append(name))
    out = []
    for i, obj in enumerate(events):
        before = len(seen)
        asyncio.run(handlers.child_changed(labels=obj["metadata"]["labels"], namespace="ns", meta=obj["metadata"],
                                           event={"type": "MODIFIED" if i else "ADDED", "object": obj},
                                           memo=kopf.Memo(controller=controller),
                                           resource=kopf.Resource("", "v1", "pods")))
        out.append(len(seen) > before)
    return out


def test_a_rollouts_pod_is_news_when_made_placed_and_in_trouble_not_when_it_starts_or_turns_ready():
    waiting = {"name": "llamacpp", "ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
    running = {"name": "llamacpp", "ready": False, "state": {"running": {}}}
    ready = {**running, "ready": True}
    crashing = {"name": "llamacpp", "ready": False, "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                "lastState": {"terminated": {"exitCode": 1}}}
    assert changes([
        pod(rv=1, phase="Pending"),  # made
        pod(rv=2, phase="Pending", node="n1", conditions=[{"type": "PodScheduled", "status": "True"}]),  # placed
        pod(rv=3, phase="Pending", node="n1", containerStatuses=[waiting]),
        pod(rv=4, phase="Running", node="n1", containerStatuses=[running], podIP="10.0.0.1"),
        pod(rv=5, phase="Running", node="n1", containerStatuses=[ready],
            conditions=[{"type": "Ready", "status": "True"}]),
        pod(rv=6, phase="Running", node="n1", containerStatuses=[crashing]),  # in trouble
        pod(rv=7, phase="Succeeded", node="n1", containerStatuses=[]),  # ended
    ]) == [True, True, False, False, False, True, True]

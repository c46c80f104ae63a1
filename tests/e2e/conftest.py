"""Fixtures of the end-to-end layer."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def gpu_node(cluster, core, local_node):
    """A second process-backed node, in the gpu pool with two GPUs (the vLLM example takes two,
    the SGLang one has two replicas of one), for this test alone: pods scheduled there really run (the GPU engines' images run their fakes). Only pods that
    tolerate its own taint (`modelship_testbed.localnode.extra.tolerations`) land on it; it
    carries the label `test=<tag>`. Stopped by its pids, its pods, Lease and Node removed, after
    the test."""
    from modelship_testbed.localnode.extra import ExtraNode

    tag = "g" + uuid.uuid4().hex[:6]
    node = ExtraNode(f"modelship-gpu-{tag}", gpus=2, labels={"test": tag}).start(core, timeout=90)
    yield node
    log = node.log()
    node.stop(core)
    print(f"--- extra node {node.name}'s log (tail)\n{log[-3000:]}")

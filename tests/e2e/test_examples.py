"""End to end: the examples in examples/ applied as a user would, with kubectl."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.localnode, pytest.mark.slow]


def test_llama_server_example_answers_the_demo_question(cluster, namespace, local_node):
    from modelship_testbed import demo

    out = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=demo.render_example())
    assert "deployment.apps/smollm2 created" in out and "service/smollm2 created" in out
    pod = demo.wait_ready_pod("app=smollm2", namespace, log=print, timeout=180)
    assert pod["spec"]["nodeName"] == local_node
    answer = demo.ask(f"http://{pod['status']['podIP']}:8080")
    assert "paris" in answer.lower(), answer
    # The Service's EndpointSlice lists the ready pod at its own loopback address.
    slices = cluster.kubectl("get", "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=smollm2",
                             "-o", "jsonpath={.items[*].endpoints[*].addresses[*]}")
    assert pod["status"]["podIP"] in slices.split()

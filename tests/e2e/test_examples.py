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
    # The Service's EndpointSlice lists the ready pod at its own loopback address. The
    # EndpointSlice controller follows the pod's readiness a moment later: first wait until a
    # slice has a ready endpoint (as the demo does).
    demo.endpoint_address({"endpoint": {"url": f"http://smollm2.{namespace}.svc"}}, run=cluster.kubectl)
    slices = cluster.kubectl("get", "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=smollm2",
                             "-o", "jsonpath={.items[*].endpoints[*].addresses[*]}")
    assert pod["status"]["podIP"] in slices.split()


# The operator's examples. The operator and CRD fixtures come from the integration layer.
from ..integration.conftest import crd_installed, fake_hub, operator  # noqa: E402,F401  (fixtures)
from ..integration.conftest import md_status, preload_claim  # noqa: E402

EXAMPLES = sorted((REPO_EXAMPLES := __import__("pathlib").Path(__file__).resolve().parents[2] / "examples")
                  .glob("*.yaml")) + sorted((REPO_EXAMPLES / "gitops" / "models").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_accepted_by_the_api_server(cluster, crd_installed, namespace, path):
    out = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path))
    assert "(server dry run)" in out


def test_smollm2_example_becomes_ready_through_the_operator_and_answers(cluster, namespace, local_node, operator):
    """examples/smollm2.yaml, applied with kubectl, served by llama.cpp on the local node. Until
    the operator downloads from a Hub mirror (next issue), the test puts the weights on the
    volume the operator created, and the download Job (which retries) finds them there."""
    from ..integration.test_operator import call_endpoint

    operator.start(config={"defaultCpuPool": "local"})
    out = cluster.kubectl("apply", "-n", namespace, "-f", str(REPO_EXAMPLES / "smollm2.yaml"))
    assert "modeldeployment.modelship.io/smollm2 created" in out
    preload_claim(cluster, namespace, "smollm2-weights", create=False)
    cluster.kubectl("wait", "--for=condition=Ready", "md/smollm2", "-n", namespace, "--timeout=180s")
    status = md_status(cluster, namespace, "smollm2")
    assert status["resolved"]["quantization"] == "Q4_1"
    assert "paris" in call_endpoint(cluster, status).lower()


def test_make_demo_runs_the_operator_path_and_answers(cluster, local_node):
    """The README's first command (`make demo` runs `modelship demo`): the Hub mirror, the
    chart installed with helm, the example, progress, and the answer through port-forward."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from modelship_testbed.config import TestbedConfig
    from modelship_testbed.slowlink import SlowLink

    cluster.kubectl("delete", "namespace", "modelship-demo", "--ignore-not-found", "--timeout=120s")
    # The mirror behind a slow link: 6 MiB/s, ~16 s for the 93.8 MiB GGUF, so that several of
    # the operator's progress reads (every 3 s) fall inside the download on any machine (a
    # fast one downloaded it before the first, and the demo had no "MiB of" line to show).
    link = SlowLink("127.0.0.1", TestbedConfig.load().ports.hub_mirror, rate=6 * 1024 * 1024).start()
    try:
        proc = subprocess.run([str(Path(sys.executable).with_name("modelship")), "demo", "--hub-mirror", link.url],
                              capture_output=True, text=True, timeout=600)
    finally:
        link.stop()
    try:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = proc.stdout + proc.stderr
        for step in ("helm upgrade --install modelship charts/modelship -n modelship-system", "installed in",
                     "kubectl apply -f examples/smollm2.yaml", "Downloading:",
                     "MiB of 93.8 MiB", "Ready in", "after kubectl apply",
                     "kubectl port-forward -n modelship-system svc/modelship-router"):
            assert step in out, out
        assert "answer: " in out and "paris" in out.split("answer: ", 1)[1].lower(), out
        # Everything keeps running after the command: the release's pods, the model.
        deploys = json.loads(cluster.kubectl("get", "deploy", "-n", "modelship-system", "-o", "json"))["items"]
        assert {d["metadata"]["name"]: d["status"].get("readyReplicas") for d in deploys} == \
            {"modelship-operator": 2, "modelship-router": 2}
        assert md_status(cluster, "modelship-demo", "smollm2")["phase"] == "Ready"
    finally:
        cluster.kubectl("delete", "namespace", "modelship-demo", "--ignore-not-found", "--timeout=120s")
        from modelship_testbed.demo import helm

        helm("uninstall", "modelship", "-n", "modelship-system", "--ignore-not-found", "--wait")

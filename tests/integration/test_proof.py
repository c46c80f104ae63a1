"""The loop closes: kubectl apply of a CRD and a custom resource, a Kopf handler, a real
llama-server pod on the local node, and a real answer over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.localnode, pytest.mark.slow]

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "chatservers.proof.modelship.io"},
    "spec": {"group": "proof.modelship.io", "scope": "Namespaced",
             "names": {"plural": "chatservers", "singular": "chatserver", "kind": "ChatServer"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"spec": {"type": "object", "required": ["file"],
                                                           "properties": {"file": {"type": "string"}}},
                                                  "status": {"type": "object",
                                                             "x-kubernetes-preserve-unknown-fields": True}}}}}]},
}


def test_custom_resource_becomes_a_real_llama_server_that_answers(cluster, namespace, local_node, monkeypatch):
    from kopf.testing import KopfRunner

    from modelship_testbed.demo import ask, pod_ready

    cluster.apply(CRD, namespace)
    cluster.wait_established("chatservers.proof.modelship.io", 30)
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    operator = str(Path(__file__).with_name("proof_operator.py"))
    with KopfRunner(["run", "--standalone", f"--namespace={namespace}", operator], timeout=300) as runner:
        cluster.apply({"apiVersion": "proof.modelship.io/v1", "kind": "ChatServer", "metadata": {"name": "smol"},
                       "spec": {"file": "SmolLM2-135M-Instruct.Q4_1.gguf"}}, namespace)

        def ready_pod():
            items = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=smol", "-o", "json"))
            return next((p for p in items["items"] if pod_ready(p)), None)

        pod = wait_for(ready_pod, 180, "the llama-server pod to be Ready",
                       lambda: cluster.kubectl("describe", "pods", "-n", namespace))
        answer = ask(f"http://{pod['status']['podIP']}:8080")
    assert runner.exception is None
    assert "Created Deployment smol" in runner.output
    assert pod["spec"]["nodeName"] == local_node
    assert "paris" in answer.lower(), answer

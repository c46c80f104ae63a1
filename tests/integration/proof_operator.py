"""A throwaway Kopf operator for the test bed's proof (the real operator comes later):
a ChatServer custom resource becomes a Deployment running the real llama-server."""

import os

import kopf
from kubernetes import client, config

from modelship_testbed.binaries import smollm2_gguf


@kopf.on.login()
def login(**kwargs):
    # The kubernetes library fixes its default kubeconfig path when first imported; read
    # KUBECONFIG now, as a test sets it after that.
    return kopf.login_with_kubeconfig(**kwargs)


def apps() -> client.AppsV1Api:
    return client.AppsV1Api(config.new_client_from_config(config_file=os.environ["KUBECONFIG"]))


# No --jinja: the GGUF's own chat template adds a default system prompt that this 135M
# model answers badly; llama.cpp's built-in ChatML template gets "Paris".
@kopf.on.create("proof.modelship.io", "v1", "chatservers")
def create(spec, name, namespace, body, logger, **_):
    labels = {"app": name}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"nodeSelector": {"modelship.io/local-node": "true"}, "containers": [{
                "name": "llama-server", "image": "ghcr.io/ggml-org/llama.cpp:server",
                "args": ["-m", f"/models/{spec['file']}", "--host", "0.0.0.0", "--port", "8080", "-c", "2048",
                         "--alias", name, "-t", "1"],
                "readinessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 1},
                "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}]}],
                "volumes": [{"name": "models", "hostPath": {"path": str(smollm2_gguf().parent), "type": "Directory"}}]}}},
    }
    kopf.adopt(deployment, owner=body)
    apps().create_namespaced_deployment(namespace, deployment)
    logger.info(f"Created Deployment {name}")

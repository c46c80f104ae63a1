"""Opening the test bed for a benchmark that works on the cluster (scale.py, wake_up.py): its
`Cluster` (kubectl and the kubeconfig), the client library logged in, and a namespace of the
bench's own. The benchmarks put the checkout on sys.path before they import this."""

from __future__ import annotations

import uuid

from kubernetes import client, config

from tests.conftest import Cluster


def open_testbed(prefix: str) -> tuple[Cluster, client.ApiClient, str]:
    """The test bed's cluster, an API client, and a new namespace `<prefix>-<5 hex>`."""
    from modelship_testbed import binaries
    from modelship_testbed.config import LOCAL_NODE_NAME
    from modelship_testbed.paths import kubeconfig_path

    kubeconfig = str(kubeconfig_path())
    cluster = Cluster(kubeconfig, str(binaries.path("kubectl")), LOCAL_NODE_NAME)
    config.load_kube_config(kubeconfig)
    api = client.ApiClient()
    namespace = f"{prefix}-{uuid.uuid4().hex[:5]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    return cluster, api, namespace

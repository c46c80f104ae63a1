"""The one rule for reaching the API server, used by every program that talks to it (the
operator, its Kopf watches, the router): in a pod, its ServiceAccount; anywhere else (or
with $KUBECONFIG set), the kubeconfig, read when asked for rather than when the kubernetes
library is first imported (it fixes its default path then, and a KUBECONFIG set later would
be missed)."""

from __future__ import annotations

import os

from kubernetes import client, config

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def in_cluster() -> bool:
    """In a pod with a ServiceAccount token, and no kubeconfig asked for instead."""
    return (bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not os.environ.get("KUBECONFIG")
            and os.path.exists(SERVICE_ACCOUNT_TOKEN))


def in_cluster_server() -> str:
    """The API server as the kubelet tells every pod (`KUBERNETES_SERVICE_HOST` and `_PORT`)."""
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def api_client() -> client.ApiClient:
    """A client of its own (never the library's global default configuration), with room for
    the operator's concurrent requests (the library's default pool holds 5 per core)."""
    configuration = client.Configuration()
    if in_cluster():
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    # One connection for each thread that may ask at once (the operator's 32 I/O threads, its
    # 16 readers, the Event poster): a request past the pool's size opens a connection and
    # closes it after, a TLS handshake each time on both sides (bench/scale.py saw them).
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize, 64)
    return client.ApiClient(configuration)

"""How a command for people reaches the router, in this order:

1. `--router-url URL`, as given (a router elsewhere, or an engine straight, for a check);
2. in a pod (`KUBERNETES_SERVICE_HOST` and a ServiceAccount token): the router Service's
   DNS name, `http://<service>.<namespace>.svc:<port>`;
3. else a port-forward of our own to a ready router pod, through the API server
   (`kubernetes.stream.portforward`, no kubectl): a listener on 127.0.0.1:<free port>
   whose each connection is relayed over its own portforward stream to the pod's port 8000.

The router Service is the one labelled `app.kubernetes.io/component=router` (the chart's),
in `--router-namespace` or, without it, in any namespace; its pods are found through its
selector. `router(...)` is a context manager yielding the base URL and closing the listener
and its threads on exit. `--api-key` (default `$MODELSHIP_API_KEY`) is sent as a Bearer token.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Any, Callable, Iterator

import click

from .common import EXIT_NOT_FOUND, Kube, UserError, kube_options

ROUTER_LABEL = "app.kubernetes.io/component=router"
ROUTER_POD_PORT = 8000  # the router container's port, named `http`
NOT_FOUND = ("no modelship router found{where}: install the chart (helm install modelship charts/modelship) "
             "or pass --router-url")


def router_options(fn: Callable) -> Callable:
    fn = click.option("--api-key", envvar="MODELSHIP_API_KEY", default=None, show_envvar=True,
                      help="The router's API key, sent as `Authorization: Bearer` (default: $MODELSHIP_API_KEY).")(fn)
    fn = click.option("--router-namespace", default=None,
                      help="Namespace of the router Service (default: look in every namespace).")(fn)
    fn = click.option("--router-url", default=None, metavar="URL",
                      help="The router's base URL (skips finding it in the cluster).")(fn)
    return kube_options(fn)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


@contextlib.contextmanager
def router(router_url: str | None, router_namespace: str | None, kubeconfig: str | None = None,
           context: str | None = None, namespace: str | None = None) -> Iterator[str]:
    """The router's base URL (no trailing slash), reachable for as long as the block runs."""
    if router_url:
        yield router_url.rstrip("/")
        return
    from ..login import in_cluster

    kube = Kube.connect(kubeconfig, context, namespace)
    service = find_service(kube.core(), router_namespace)
    if in_cluster() and not kubeconfig and not context:
        yield service_url(service)
        return
    pod = ready_pod(kube.core(), service)
    with PortForward(kube.core(), pod.metadata.namespace, pod.metadata.name, ROUTER_POD_PORT) as url:
        yield url


def find_service(core: Any, namespace: str | None) -> Any:
    where = f" in namespace {namespace!r}" if namespace else ""
    if namespace:
        services = core.list_namespaced_service(namespace, label_selector=ROUTER_LABEL).items
    else:
        services = core.list_service_for_all_namespaces(label_selector=ROUTER_LABEL).items
    if not services:
        raise UserError(NOT_FOUND.format(where=where), EXIT_NOT_FOUND)
    if len(services) > 1 and not namespace:
        names = ", ".join(f"{s.metadata.namespace}/{s.metadata.name}" for s in services)
        raise UserError(f"more than one modelship router ({names}): pass --router-namespace", EXIT_NOT_FOUND)
    return services[0]


def service_url(service: Any) -> str:
    ports = service.spec.ports or []
    port = next((p.port for p in ports if p.name == "http"), ports[0].port if ports else 80)
    return f"http://{service.metadata.name}.{service.metadata.namespace}.svc:{port}"


def ready_pod(core: Any, service: Any) -> Any:
    selector = ",".join(f"{k}={v}" for k, v in sorted((service.spec.selector or {}).items()))
    pods = core.list_namespaced_pod(service.metadata.namespace, label_selector=selector).items if selector else []
    ready = [p for p in pods if is_ready(p)]
    if not ready:
        raise UserError(f"the modelship router {service.metadata.namespace}/{service.metadata.name} has no ready "
                        f"pod ({len(pods)} in all): see `kubectl -n {service.metadata.namespace} get pods -l "
                        f"{selector}`, or pass --router-url", EXIT_NOT_FOUND)
    return sorted(ready, key=lambda p: p.metadata.name)[0]


def is_ready(pod: Any) -> bool:
    conditions = (pod.status and pod.status.conditions) or []
    return (pod.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in conditions))


class PortForward:
    """A local listener relaying each connection to a pod's port through the API server."""

    def __init__(self, core: Any, namespace: str, pod: str, port: int):
        self.core, self.namespace, self.pod, self.port = core, namespace, pod, port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> str:
        self._probe()
        self._spawn(self._accept)
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        for t in self.threads:
            t.join(timeout=2)

    def _probe(self) -> None:
        """One stream opened and closed first: a refusal (RBAC on pods/portforward, a pod gone)
        is the API server's own answer now, as one line, not a dropped connection later."""
        from kubernetes.stream import portforward

        portforward(self.core.connect_get_namespaced_pod_portforward, self.pod, self.namespace,
                    ports=str(self.port)).close()

    def _spawn(self, target: Callable, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name=f"port-forward-{self.pod}")
        self.threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                ready, _, _ = select.select([self.listener], [], [], 0.2)
                if ready:
                    conn, _ = self.listener.accept()
                    self._spawn(self._relay, conn)
            except (OSError, ValueError):  # (the listener closed under select: stopping)
                return

    def _relay(self, conn: socket.socket) -> None:
        from kubernetes.stream import portforward

        forward = None
        try:
            forward = portforward(self.core.connect_get_namespaced_pod_portforward, self.pod, self.namespace,
                                  ports=str(self.port))
            remote = forward.socket(self.port)
            remote.setblocking(True)
            pump(conn, remote, self.stopping)
        except Exception:  # noqa: BLE001 - one connection's failure: the client sees it closed
            pass
        finally:
            conn.close()
            if forward is not None:
                with contextlib.suppress(Exception):
                    forward.close()


def pump(a: socket.socket, b: socket.socket, stopping: threading.Event) -> None:
    """Copies bytes both ways until either side closes (or the forward stops)."""
    peers = {a: b, b: a}
    while not stopping.is_set():
        readable, _, _ = select.select(list(peers), [], [], 0.2)
        for s in readable:
            data = s.recv(65536)
            if not data:
                return
            peers[s].sendall(data)

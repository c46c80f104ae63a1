"""`kubectl port-forward` to pods on the local node: kubectl -> API server (WebSocket) ->
the node's kubelet port (SPDY, `kubelet-streaming`) -> the pod's own loopback address; and
`kubectl logs` still works through the same kubelet port."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest

from modelship_testbed import procs
from modelship_testbed.demo import pod_ready
from modelship_testbed.portforward import PortForward

from ..conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.localnode]

ON_LOCAL = {"modelship.io/local-node": "true"}

# A threaded HTTP server that names its pod, takes 1 s on /slow, and logs each request.
SERVER = """
import os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(1)
        body = ("hello from %s at %s path %s\\n" % (os.environ["HOSTNAME"], os.environ["POD_IP"], self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        print("served", self.path, flush=True)
print("listening", flush=True)
ThreadingHTTPServer((os.environ["POD_IP"], 8080), H).serve_forever()
"""


def web(name: str = "web") -> list[dict]:
    return [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
         "spec": {"nodeSelector": ON_LOCAL, "terminationGracePeriodSeconds": 2, "containers": [{
             "name": "web", "image": "busybox", "ports": [{"containerPort": 8080}],
             "command": ["sh", "-c", 'exec python3 -c "$SERVER"'],
             "env": [{"name": "SERVER", "value": SERVER},
                     {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
             "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
         "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}},
    ]


@pytest.fixture
def web_pod(cluster, namespace, local_node) -> dict:
    cluster.apply(web(), namespace)

    def ready():
        p = json.loads(cluster.kubectl("get", "pod", "web", "-n", namespace, "-o", "json"))
        return pod_ready(p) and p

    return wait_for(ready, 60, "pod web Ready",
                    lambda: cluster.kubectl("describe", "pod", "web", "-n", namespace))


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)


def test_port_forward_to_a_pod_serves_concurrent_connections(cluster, namespace, web_pod):
    ip = web_pod["status"]["podIP"]
    with PortForward(cluster.kubeconfig, namespace, "pod/web", 8080, kubectl=cluster.kubectl_bin) as pf:
        print(f"port-forward ready in {pf.ready_seconds:.2f}s on {pf.url}")
        r = get(f"{pf.url}/one")
        assert r.status_code == 200
        assert r.text == f"hello from web at {ip} path /one\n"
        # Two connections at once, each held 1 s by the pod: both through one kubectl, in parallel.
        results: dict[str, httpx.Response] = {}

        def fetch(path: str) -> None:
            results[path] = get(f"{pf.url}{path}")

        t0 = time.monotonic()
        threads = [threading.Thread(target=fetch, args=(p,)) for p in ("/slow-a", "/slow-b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        took = time.monotonic() - t0
        assert {p: r.text for p, r in results.items()} == {
            "/slow-a": f"hello from web at {ip} path /slow-a\n", "/slow-b": f"hello from web at {ip} path /slow-b\n"}
        assert took < 1.9, f"two 1-second requests took {took:.2f}s: not forwarded concurrently"
        assert pf.alive(), pf.output()
    assert pf.proc.poll() is not None  # kubectl stopped on leaving the block


def test_port_forward_to_a_service_and_a_chosen_local_port(cluster, namespace, web_pod):
    with socket.socket() as s:  # a free local port, as a person would pick one
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with PortForward(cluster.kubeconfig, namespace, "svc/web", 80, local_port=port, kubectl=cluster.kubectl_bin) as pf:
        assert pf.local_port == port
        r = get(f"http://127.0.0.1:{port}/via-service")
        assert r.text == f"hello from web at {web_pod['status']['podIP']} path /via-service\n"
        assert f"Forwarding from 127.0.0.1:{port} -> 8080" in pf.output()  # kubectl resolved 80 to the pod's 8080


def test_logs_and_logs_follow_still_work_through_the_kubelet_port(cluster, namespace, web_pod):
    kubectl = [cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "-n", namespace]
    follow = subprocess.Popen([*kubectl, "logs", "-f", "pod/web"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(follow.stdout), daemon=True)
    reader.start()
    try:
        with PortForward(cluster.kubeconfig, namespace, "pod/web", 8080, kubectl=cluster.kubectl_bin) as pf:
            assert get(f"{pf.url}/logged-while-following").status_code == 200
            wait_for(lambda: "served /logged-while-following\n" in lines, 10,
                     "the request in the followed log", lambda: "".join(lines))
    finally:
        procs.stop(follow, 5)
        reader.join(5)
    assert lines[0] == "listening\n"
    assert "served /logged-while-following" in cluster.kubectl("logs", "pod/web", "-n", namespace, "--tail=1")


def test_a_port_nothing_listens_on_gives_connection_refused(cluster, namespace, web_pod):
    with PortForward(cluster.kubeconfig, namespace, "pod/web", 8089, kubectl=cluster.kubectl_bin) as pf:
        with pytest.raises(httpx.HTTPError):
            get(f"{pf.url}/")
        # kubectl reports the kubelet's error, then (since 1.31) gives up on the pod.
        wait_for(lambda: "connect: connection refused" in pf.output(), 10, "kubectl's error", pf.output)
    out = pf.output()
    assert "error forwarding port 8089 to pod web" in out
    assert f"dial tcp4 {web_pod['status']['podIP']}:8089: connect: connection refused" in out


def _kubelet_client(pki_dir) -> ssl.SSLContext:
    """What the API server presents to a kubelet (--kubelet-client-certificate)."""
    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    ctx.load_cert_chain(str(pki_dir / "apiserver-kubelet-client.crt"), str(pki_dir / "apiserver-kubelet-client.key"))
    return ctx


def test_the_kubelet_port_answers_like_a_kubelet(cluster, namespace, web_pod):
    """Straight to the kubelet port, as the API server calls it: client certificates required;
    a pod this node does not run, or another uid, is a 404 that says so."""
    from modelship_testbed.config import TestbedConfig

    cfg = TestbedConfig.load()
    pki_dir = cfg.dir / "pki"
    base = f"https://127.0.0.1:{cfg.ports.kubelet}"
    with pytest.raises(httpx.HTTPError):  # no client certificate: the TLS handshake fails
        httpx.get(f"{base}/healthz", verify=ssl.create_default_context(cafile=str(pki_dir / "ca.crt")))
    with httpx.Client(verify=_kubelet_client(pki_dir), timeout=10) as c:
        assert c.get(f"{base}/healthz").text == "ok"
        r = c.post(f"{base}/portForward/{namespace}/nope")
        assert r.status_code == 404
        assert f'no pod "nope" in namespace "{namespace}" runs on node {cluster.local_node}' in r.text
        r = c.post(f"{base}/portForward/{namespace}/web/not-its-uid")
        assert r.status_code == 404 and "pod not found" in r.text
        logs = c.get(f"{base}/containerLogs/{namespace}/web/web")
        assert logs.status_code == 200 and logs.text.startswith("listening\n")


def test_the_kubelet_port_speaks_the_websocket_port_forward_protocol_too(cluster, namespace, web_pod):
    """The kubelet's other port-forward protocol (v4.channel.k8s.io: one WebSocket per
    connection, ports in the query; each channel opens with its port, little-endian)."""
    import asyncio

    import aiohttp
    from modelship_testbed.config import TestbedConfig

    cfg = TestbedConfig.load()
    url = f"wss://127.0.0.1:{cfg.ports.kubelet}/portForward/{namespace}/web?port=8080"
    port = (8080).to_bytes(2, "little")

    async def exchange() -> bytes:
        async with aiohttp.ClientSession() as s, \
                s.ws_connect(url, protocols=("v4.channel.k8s.io",), ssl=_kubelet_client(cfg.dir / "pki")) as ws:
            assert ws.protocol == "v4.channel.k8s.io"
            assert sorted([await ws.receive_bytes(timeout=10), await ws.receive_bytes(timeout=10)]) == [
                b"\x00" + port, b"\x01" + port]
            await ws.send_bytes(b"\x00GET /over-websocket HTTP/1.0\r\n\r\n")
            data = b""
            while not data.endswith(b"path /over-websocket\n"):
                msg = await ws.receive_bytes(timeout=10)
                assert msg[:1] == b"\x00", msg  # data, not the error channel
                data += msg[1:]
            return data

    data = asyncio.run(exchange())
    assert data.startswith(b"HTTP/1.0 200")
    assert data.endswith(f"hello from web at {web_pod['status']['podIP']} path /over-websocket\n".encode())

"""The operator's requests reuse their connections: an answer it asks for unparsed
(`_preload_content=False`) is read to its end, so that its connection goes back to the pool.
One left unread is closed when dropped, and the next request opens a connection again (a TLS
handshake on both sides, against the API server): every Event posted did that."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from kubernetes import client

from modelship import api
from modelship.reconcile.kube import Kube
from modelship.reconcile.types import Event


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.connections = 0
        self.requests: list[str] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API server

    def setup(self):
        super().setup()
        self.server.connections += 1

    def log_message(self, *_):
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        self.server.requests.append(f"POST {self.path}")
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._answer(201, {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}})

    def do_GET(self):  # a listing by name (`fieldSelector=metadata.name=...`): the one object of that name
        self.server.requests.append(f"GET {self.path}")
        name = parse_qs(urlparse(self.path).query)["fieldSelector"][0].split("=", 1)[1]
        self._answer(200, {"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {"resourceVersion": "3"},
                           "items": [{"metadata": {"name": name, "namespace": "ns"}}]})


@pytest.fixture
def served():
    server = Server()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_address[1]}"
    kube = Kube(client.ApiClient(configuration), "modelship")
    yield server, kube
    kube.readers.shutdown()
    server.shutdown()
    server.server_close()


def md() -> api.ModelDeployment:
    return api.ModelDeployment.model_validate({
        "apiVersion": api.API_VERSION, "kind": api.KIND,
        "metadata": {"name": "m", "namespace": "ns", "uid": "u1", "resourceVersion": "7"},
        "spec": {"model": {"repo": "org/model"}}})


def test_events_posted_one_after_another_share_one_connection(served):
    server, kube = served
    for i in range(20):
        kube.post_event(md(), Event("Normal", "Created", f"made thing {i}"))
    assert server.requests == ["POST /api/v1/namespaces/ns/events"] * 20
    assert server.connections == 1


def test_a_name_found_taken_before_a_create_leaves_its_connection_in_the_pool(served):
    server, kube = served
    for i in range(5):
        kube.absent[("Deployment", "ns", f"d{i}")] = 0.0  # a 404 seen long ago: asked again before the apply
        with pytest.raises(client.ApiException) as refused:
            kube._confirm_absent("Deployment", "ns", f"d{i}")
        assert refused.value.status == 409  # made by someone else meanwhile: not taken over
    assert len(server.requests) == 5 and server.connections == 1

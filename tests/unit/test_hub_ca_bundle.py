"""`hubCaBundle`: a Hub mirror with a private CA is trusted by the operator's resolution and by
the download Jobs, besides the system's CAs, and a bundle that is not PEM is refused."""

from __future__ import annotations

import http.server
import ssl
import threading
from pathlib import Path

import pytest

from modelship.settings import ConfigError, load


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """An HTTPS server on loopback whose certificate a private CA signed: (url, the CA's PEM)."""
    from modelship_testbed import pki

    certs = pki.ensure(tmp_path_factory.mktemp("pki"), "127.96.0.1")  # "kubelet": a serving cert for 127.0.0.1

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"weights"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.cert("kubelet"), certs.key("kubelet"))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", Path(certs.ca).read_text()
    server.shutdown()


def test_the_download_job_trusts_the_bundle_besides_the_system(mirror, monkeypatch):
    from modelship.weights import fetch

    url, pem = mirror
    fetcher = fetch.Fetcher("org/repo", "0" * 40, url, Path("/nonexistent"), None, log=lambda _: None)
    fetch.tls_context.cache_clear()
    monkeypatch.delenv("MODELSHIP_HUB_CA_BUNDLE", raising=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        with fetcher.open(f"{url}/file", {}):
            pass
    fetch.tls_context.cache_clear()
    monkeypatch.setenv("MODELSHIP_HUB_CA_BUNDLE", pem)
    try:
        with fetcher.open(f"{url}/file", {}) as r:
            assert r.status == 200 and r.read() == b"weights"
        assert fetch.tls_context().cert_store_stats()["x509_ca"] > 1  # the system's CAs are still there
    finally:
        fetch.tls_context.cache_clear()


def test_the_operators_resolution_trusts_the_bundle(mirror, monkeypatch):
    import requests

    from modelship.reconcile.resolve import trust

    url, pem = mirror
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):  # absent now, and again after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url}/api/models/x", timeout=5)
    trust(pem)
    bundle = Path(__import__("os").environ["REQUESTS_CA_BUNDLE"])
    assert requests.get(f"{url}/api/models/x", timeout=5).text == "weights"
    assert bundle.read_text().count("BEGIN CERTIFICATE") > 1  # certifi's CAs, and the mirror's
    with pytest.raises(ValueError, match="hubCaBundle is not PEM"):
        trust("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")


def test_the_jobs_get_the_bundle_and_a_bad_one_is_refused_at_start(mirror, monkeypatch):
    from modelship.api import ModelDeployment
    from modelship.manifests import download_job

    _, pem = mirror
    settings = load(hub_ca_bundle=pem)
    md = ModelDeployment.model_validate({"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
                                         "metadata": {"name": "m", "namespace": "ns", "uid": "u"},
                                         "spec": {"model": {"repo": "org/m-GGUF"}}})
    from modelship.api import ResolvedModel

    resolved = ResolvedModel(repo="org/m-GGUF", revision="main", sha="1" * 40, short_sha="1111111", engine="llamacpp",
                             format="gguf", model_file="m.gguf", files=[{"path": "m.gguf", "size": 1}], total_bytes=1)
    job = download_job(md, resolved, "https://mirror.example", settings)
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MODELSHIP_HUB_CA_BUNDLE", "value": pem} in env
    with pytest.raises(ConfigError, match="hubCaBundle: not PEM certificates"):
        load(hub_ca_bundle="not a certificate")

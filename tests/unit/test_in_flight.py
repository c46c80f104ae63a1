"""The limit of the operator's requests in flight (reconcile/in_flight.py): never more than
the limit at once, the Service applies and log reads outside it, a timeout on every request."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from kubernetes import client

from modelship.reconcile.in_flight import TIMEOUT, InFlight


class FakeServer:
    """Stands for the API server behind `rest_client.request`: counts the requests in it at once."""

    def __init__(self, hold: float = 0.02):
        self.hold, self.lock = hold, threading.Lock()
        self.now = self.most = 0
        self.timeouts: list = []
        self.release = threading.Event()
        self.release.set()

    def request(self, method, url, headers=None, body=None, post_params=None, _request_timeout=None):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.timeouts.append(_request_timeout)
        try:
            if "stuck" in url:
                self.release.wait(10)
            time.sleep(self.hold)
            return url
        finally:
            with self.lock:
                self.now -= 1


def gated(limit: int, server: FakeServer) -> tuple[client.ApiClient, InFlight]:
    api = client.ApiClient()
    api.rest_client.request = server.request
    return api, InFlight(api, limit)


@pytest.mark.parametrize("limit", [1, 4])
def test_never_more_than_the_limit_at_once(limit):
    server = FakeServer()
    api, _ = gated(limit, server)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: api.rest_client.request("GET", f"/{i}"), range(64)))
    assert answers == [f"/{i}" for i in range(64)]
    assert server.most == limit


def test_no_limit_when_zero():
    server = FakeServer(hold=0.1)
    api, _ = gated(0, server)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: api.rest_client.request("GET", "/"), range(8)))
    assert server.most > 4  # (8 threads, each request held 0.1 s: they overlap)


def test_ungated_requests_pass_a_full_gate():
    """The slots all held by requests that hang: a Service apply (ungated) still goes."""
    server = FakeServer()
    server.release.clear()
    api, gate = gated(2, server)
    stuck = [threading.Thread(target=api.rest_client.request, args=("GET", "/stuck")) for _ in range(3)]
    for t in stuck:
        t.start()
    deadline = time.monotonic() + 5
    while server.now < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.now == 2  # the third waits for a slot
    done = []
    t = threading.Thread(target=lambda: done.append(gate.ungated(api.rest_client.request, "PATCH", "/services/s")))
    t.start()
    deadline = time.monotonic() + 5
    while server.now < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.now == 3  # in the server beside the two that hold the slots, the third still waiting
    server.release.set()
    t.join(5)
    for s in stuck:
        s.join(5)
    assert done == ["/services/s"]


def test_ungated_only_in_its_own_call_and_thread():
    server = FakeServer()
    server.release.clear()
    api, gate = gated(1, server)
    holder = threading.Thread(target=api.rest_client.request, args=("GET", "/stuck-held"))
    holder.start()
    while server.now < 1:
        time.sleep(0.01)
    # nested: the inner ungated does not end the outer one's freedom
    assert gate.ungated(lambda: (gate.ungated(lambda: None), gate.free.on)[1]) is True
    assert getattr(gate.free, "on", False) is False  # after it, this thread is gated again
    other = threading.Thread(target=api.rest_client.request, args=("GET", "/after"))
    other.start()
    time.sleep(0.1)
    assert server.now == 1  # still waiting for the one slot
    server.release.set()
    holder.join(5)
    other.join(5)
    assert server.most == 1


def test_every_request_gets_a_timeout_unless_it_has_one():
    server = FakeServer(hold=0)
    api, _ = gated(4, server)
    api.rest_client.request("GET", "/a")
    api.rest_client.request("GET", "/b", _request_timeout=3)
    api, _ = gated(0, server)
    api.rest_client.request("GET", "/c")
    assert server.timeouts == [TIMEOUT, 3, TIMEOUT]


def test_the_kube_layer_gates_its_client():
    """What the operator builds from its settings: Kube's client gated at `apiInFlight`, and
    off by default (bench/README.md §7, "Stop 35": no faster at 2, 4 or 8)."""
    from modelship.reconcile.kube import Kube
    from modelship.settings import Settings

    assert Settings().api_in_flight == 0
    server = FakeServer()
    api = client.ApiClient()
    api.rest_client.request = server.request
    kube = Kube(api, "modelship", in_flight=Settings(api_in_flight=3).api_in_flight)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: api.rest_client.request("GET", "/"), range(32)))
    assert server.most == kube.in_flight.limit == 3
    assert set(server.timeouts) == {TIMEOUT}


def test_log_reads_go_outside_the_limit():
    """A pod's log tail is read ungated (the API server answers it only once the kubelet has);
    the Service applies' half of this is in test_controller_writes."""
    from modelship.reconcile.kube import Kube

    seen = []
    kube = Kube(client.ApiClient(), "modelship", in_flight=1)

    class Answer:
        data = b"last line"

    def read_log(name, namespace, **_):
        seen.append(getattr(kube.in_flight.free, "on", False))
        return Answer()

    kube.core.read_namespaced_pod_log = read_log
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "status": {"phase": "Running"}}
    assert kube.log_tail(pod) == "last line"
    assert seen == [True]


def test_the_answer_is_read_within_the_slot():
    """The client reads an answer's body after `request` returns: the gate reads it first, so
    a slot is held until the whole answer is in (from the request's start to its body's end,
    never two at once at a limit of 1)."""
    lock, now, most = threading.Lock(), [0], [0]

    class Answer:
        def read(self):
            time.sleep(0.05)  # (the body still coming)
            with lock:
                now[0] -= 1
            return b"{}"

    def request(*args, **kwargs):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        return Answer()

    api = client.ApiClient()
    api.rest_client.request = request
    InFlight(api, 1)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: api.rest_client.request("GET", "/"), range(8)))
    assert most[0] == 1


def test_a_timed_out_request_is_transient():
    """What the timeout raises is tried again with back-off, not logged as unexpected."""
    import urllib3

    from modelship.reconcile.answers import is_transient

    assert is_transient(urllib3.exceptions.ReadTimeoutError(None, "/apis", "read timed out"))
    assert is_transient(urllib3.exceptions.MaxRetryError(None, "/apis"))
    assert not is_transient(ValueError("a bug"))

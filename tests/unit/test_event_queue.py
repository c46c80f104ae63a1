"""The Events posted in the background wait in a bounded queue: with the API server stuck,
the oldest waiting ones are dropped, counted, and said in a warning at most once a minute;
the rest are posted in order once it answers again."""

from __future__ import annotations

import logging
import threading

from kubernetes import client

from modelship.reconcile.event_queue import LIMIT, EventQueue
from modelship.reconcile.kube import Kube


class Stuck:
    """A post that blocks until released: an API server that does not answer."""

    def __init__(self) -> None:
        self.posted: list[int] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, n: int) -> None:
        self.started.set()
        self.release.wait(10)
        self.posted.append(n)


def test_a_stuck_api_server_keeps_at_most_limit_waiting_and_drops_the_oldest(caplog):
    now = [0.0]
    post = Stuck()
    q = EventQueue(post, limit=3, warn_every=60, clock=lambda: now[0])
    q.submit(0)
    assert post.started.wait(5)  # 0 is being posted (stuck); the rest wait
    with caplog.at_level(logging.WARNING, logger="modelship"):
        for n in range(1, 9):  # 8 more: 3 kept, 5 dropped
            q.submit(n)
            now[0] += 20  # a drop at 60 s (warned), at 80, 100, 120 (warned: 60 s on), at 140
    assert (len(q.waiting), q.dropped) == (3, 5)
    assert [r.getMessage() for r in caplog.records] == [
        "dropped 1 Events not yet posted (1 in all): more than 3 were waiting, the API server is slow or away; "
        "the ModelDeployments' status conditions still say the same",
        "dropped 3 Events not yet posted (4 in all): more than 3 were waiting, the API server is slow or away; "
        "the ModelDeployments' status conditions still say the same"]
    post.release.set()
    assert q.join(5)
    assert post.posted == [0, 6, 7, 8]  # in order, the newest kept


def test_a_failed_post_does_not_stop_the_ones_after_it(caplog):
    posted = []

    def post(n):
        if n == 1:
            raise RuntimeError("boom")
        posted.append(n)

    q = EventQueue(post)
    for n in range(3):
        q.submit(n)
    assert q.join(5) and posted == [0, 2]


def test_the_operators_events_go_through_the_bounded_queue():
    kube = Kube(client.ApiClient(), "modelship")
    assert isinstance(kube.events, EventQueue) and kube.events.limit == LIMIT == 1000
    assert kube.events.post == kube.post_event


def test_events_of_different_objects_go_at_once_and_one_objects_in_order():
    """Four threads: four objects' Events posted at once (one thread was the bottleneck of a
    burst); a second Event of an object waits for its first, whichever thread is free."""
    started: list[tuple[str, int]] = []
    gate = threading.Event()
    lock = threading.Lock()
    four = threading.Barrier(5)

    def post(obj: str, n: int) -> None:
        with lock:
            started.append((obj, n))
        if n == 0:
            four.wait(5)  # all four first Events are being posted at the same time
            gate.wait(5)

    q = EventQueue(post, threads=4, key=lambda obj, n: obj)
    for n in range(3):
        for obj in "abcd":
            q.submit(obj, n)
    four.wait(5)
    with lock:
        assert sorted(started) == [(o, 0) for o in "abcd"]  # no object's second before its first ended
    gate.set()
    assert q.join(5)
    for obj in "abcd":
        assert [n for o, n in started if o == obj] == [0, 1, 2]


def test_the_operators_events_go_four_at_once_by_modeldeployment():
    kube = Kube(client.ApiClient(), "modelship")
    assert len(kube.events._threads) == 4
    md = type("MD", (), {"namespace": "ns", "name": "m"})()
    assert kube.events.key(md, object()) == ("ns", "m")

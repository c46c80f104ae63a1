"""bench/scale_watch.py, what the scale bench counts its progress from: a watch of each kind
that keeps a summary by name, against a fake API whose listings and watch streams are scripted
(the real API server's answers: one JSON event a line)."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

import orjson
from kubernetes import client

BENCH = Path(__file__).resolve().parents[2] / "bench"


def scale_watch():
    spec = importlib.util.spec_from_file_location("scale_watch", BENCH / "scale_watch.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_watch"] = module
    spec.loader.exec_module(module)
    return module


W = scale_watch()


def obj(name: str, version: int, replicas: int = 2, available: bool = False) -> dict:
    conditions = [{"type": "Available", "status": "True"}] if available else []
    return {"metadata": {"name": name, "resourceVersion": str(version)}, "spec": {"replicas": replicas},
            "status": {"conditions": conditions}}


class Answer:
    """A urllib3 answer: `.data` for a listing, lines for a watch."""

    def __init__(self, data: bytes = b"", lines: list[bytes] | None = None):
        self.data, self.lines, self.closed = data, lines or [], False

    def __iter__(self):
        return iter(self.lines)

    def close(self):
        self.closed = True

    def release_conn(self):
        pass

    def shutdown(self):
        self.closed = True


class FakeApi:
    """Listings and watches played from a script; a watch past the script's end blocks (as a
    quiet watch does) until the test ends."""

    def __init__(self, listings: list[tuple[list[dict], int]], watches: list):
        self.listings, self.watches = list(listings), list(watches)
        self.calls: list[tuple[str, str | None]] = []
        self.idle = threading.Event()

    def __call__(self, namespace, watch=False, resource_version=None, **_):
        self.calls.append(("watch" if watch else "list", resource_version))
        if not watch:
            items, version = self.listings.pop(0)
            return Answer(orjson.dumps({"metadata": {"resourceVersion": str(version)}, "items": items}))
        if not self.watches:
            self.idle.set()
            time.sleep(3600)
        step = self.watches.pop(0)
        if isinstance(step, Exception):
            raise step
        return Answer(lines=[orjson.dumps({"type": t, "object": o}) + b"\n" for t, o in step])


def settle(api: FakeApi) -> None:
    assert api.idle.wait(10), api.calls


def test_events_are_kept_by_name_and_the_next_watch_starts_from_the_last_version():
    api = FakeApi([([obj("a", 1)], 5)],
                  [[("ADDED", obj("b", 6)), ("MODIFIED", obj("a", 7, available=True)), ("BOOKMARK", {"metadata": {"resourceVersion": "9"}})],
                   [("DELETED", obj("b", 10))]])
    w = W.Watched(api, "ns", W._deployment)
    settle(api)
    assert w.snapshot() == {"a": (2, True)}
    assert api.calls == [("list", None), ("watch", "5"), ("watch", "9"), ("watch", "10")]
    w.stop()


def test_an_error_event_lists_again_and_the_listing_replaces_what_was_held():
    gone = {"kind": "Status", "code": 410, "reason": "Expired"}
    api = FakeApi([([obj("a", 1), obj("b", 2)], 5), ([obj("c", 20)], 21)],
                  [[("MODIFIED", obj("a", 6, available=True)), ("ERROR", gone)]])
    w = W.Watched(api, "ns", W._deployment)
    settle(api)
    assert w.snapshot() == {"c": (2, False)}  # a and b went while the watch was gone
    assert api.calls == [("list", None), ("watch", "5"), ("list", None), ("watch", "21")]
    w.stop()


def test_a_watch_refused_with_410_lists_again_and_any_other_failure_watches_again(capsys):
    api = FakeApi([([obj("a", 1)], 5), ([obj("a", 30, replicas=1)], 31)],
                  [ConnectionResetError("dropped"), client.ApiException(status=410, reason="Gone"),
                   [("ADDED", obj("d", 32))]])
    w = W.Watched(api, "ns", W._deployment)
    settle(api)
    assert api.calls == [("list", None), ("watch", "5"), ("watch", "5"), ("list", None), ("watch", "31"),
                         ("watch", "32")]
    assert w.snapshot() == {"a": (1, False), "d": (2, False)}
    err = capsys.readouterr().err
    assert "dropped" in err and err.count("watches again") == 1  # the first failure only
    w.stop()


def test_progress_counts_as_scale_py_defines_them():
    md = lambda name, gen, seen, phase=None: {  # noqa: E731
        "metadata": {"name": name, "generation": gen, "resourceVersion": "1"},
        "status": {"observedGeneration": seen, "phase": phase}}
    progress = W.Progress.__new__(W.Progress)
    lists = {
        "models": [md("m0", 1, 1, "Ready"), md("m1", 2, 1), md("m2", 1, 1), md("m3", 1, 1, "Starting")],
        "deployments": [obj("m0", 1), obj("m1", 1), obj("m2", 1, replicas=1), obj("m3", 1)],
        "services": [obj("m0", 1), obj("m1", 1), obj("m2", 1)],
    }
    apis = {}
    for kind, summary in (("models", W._md), ("deployments", W._deployment), ("services", W._service)):
        apis[kind] = FakeApi([(lists[kind], 1)], [])
        setattr(progress, kind, W.Watched(apis[kind], "ns", summary))
    done, ready, lacking = progress.counts()
    assert (done, ready) == (1, 1)  # m0 only: m1's status is behind, m2's Deployment is not of 2, m3 has no Service
    assert lacking == {"status": 1, "Deployment": 1, "Service": 1}
    progress.stop()


def test_a_watch_that_cannot_start_stops_those_started_before_it():
    first = FakeApi([([obj("a", 1)], 5)], [])

    def refused(namespace, **_):
        raise client.ApiException(status=403, reason="Forbidden")

    made = []

    def watch_first():
        made.append(W.Watched(first, "ns", W._deployment))
        return made[-1]

    try:
        W.started([watch_first, lambda: W.Watched(refused, "ns", W._service)])
    except client.ApiException as e:
        assert e.status == 403
    else:
        raise AssertionError("the refusal was not raised")
    assert made and made[0].stopping.is_set()
    [w] = W.started([lambda: W.Watched(FakeApi([([obj("b", 1)], 2)], []), "ns", W._deployment)])
    assert w.snapshot() == {"b": (2, False)} and not w.stopping.is_set()
    w.stop()

"""The download window (`reconcile/window.py`): at most N download Jobs in flight in the
cluster; the others wait in line, first come first served, and are woken as places free; and
the plan's part of it (DownloadQueued, no Job made)."""

from __future__ import annotations

import copy

from modelship import manifests
from modelship.reconcile.plan import plan
from modelship.reconcile.types import Observed
from modelship.reconcile.window import DownloadWindow

from .test_plan import ENDPOINT, T0, applied, cond, gguf, make_md, obs_job, obs_pvc, obs_service, settings

NS = "ns1"


def window(size: int) -> tuple[DownloadWindow, list[str]]:
    woken: list[str] = []
    return DownloadWindow(size, lambda ns, name: woken.append(name)), woken


def md(i: int) -> tuple[str, str]:
    return (NS, f"m{i}")


def test_places_are_given_until_the_window_is_full_then_the_rest_wait_in_line():
    w, woken = window(2)
    assert w.take(md(1), "j1") and w.take(md(2), "j2")
    assert not w.take(md(3), "j3") and not w.take(md(4), "j4")
    assert (w.in_flight, w.queued) == (2, 2) and woken == []
    assert w.take(md(1), "j1")  # its own Job, asked again: still its place


def test_a_job_that_ends_lets_the_first_in_line_in_and_it_takes_the_place():
    w, woken = window(2)
    for i in range(1, 6):
        w.take(md(i), f"j{i}")
    w.settle(md(1), "j1")  # still running: nothing moves
    assert woken == []
    w.settle(md(2), None)  # finished
    assert woken == ["m3"] and w.in_flight == 1
    assert not w.take(md(9), "j9")  # a newcomer does not take the place promised to m3
    assert w.take(md(3), "j3") and w.in_flight == 2
    w.forget(md(1))  # deleted
    assert woken == ["m3", "m4"]


def test_one_woken_that_needs_no_place_any_more_passes_it_on():
    w, woken = window(1)
    w.take(md(1), "j1")
    w.take(md(2), "j2")
    w.take(md(3), "j3")
    w.settle(md(1), None)
    assert woken == ["m2"]
    w.settle(md(2), None)  # (deleted meanwhile, or its download completed elsewhere)
    assert woken == ["m2", "m3"]


def test_a_woken_reconcile_that_fails_passes_its_place_on_and_keeps_its_place_in_line():
    w, woken = window(1)
    for i in (1, 2, 3, 4):
        w.take(md(i), f"j{i}")
    w.settle(md(1), None)
    w.passed(md(2))  # its reconcile failed: retried later, with back-off
    assert woken == ["m2", "m3"]
    assert w.take(md(3), "j3") and not w.take(md(2), "j2")  # the retry waits again ...
    assert list(w.waiting) == [md(2), md(4)]  # ... ahead of those who asked after it
    w.settle(md(3), None)
    assert woken == ["m2", "m3", "m2"]


def test_a_new_revision_gives_up_the_place_of_the_job_it_replaces():
    w, woken = window(1)
    assert w.take(md(1), "j1-old")
    assert not w.take(md(2), "j2")
    assert w.take(md(1), "j1-new") and w.in_flight == 1 and w.job_of[md(1)] == (NS, "j1-new")


def test_a_deletion_the_watch_missed_frees_its_places_at_the_next_listing():
    w, woken = window(1)
    w.take(md(1), "j1")
    w.take(md(2), "j2")
    known = w.known()
    w.take(md(3), "j3")  # (asked while the listing ran: not in it, and kept)
    w.keep_only({md(2)}, known)  # m1 is gone
    assert woken == ["m2"] and md(3) in w.waiting and md(1) not in w.job_of


def test_a_job_shared_by_several_takes_one_place_and_leaves_with_the_last():
    w, woken = window(2)
    assert w.take(md(1), "shared") and w.take(md(2), "shared")
    w.settle(md(3), "running-before-a-restart")  # a Job seen running counts, even past the size
    assert w.in_flight == 2 and not w.take(md(4), "j4")
    w.settle(md(1), None)
    assert woken == [] and w.in_flight == 2
    w.settle(md(2), None)
    assert woken == ["m4"]


def test_no_bound_at_zero():
    w, woken = window(0)
    assert all(w.take(md(i), f"j{i}") for i in range(100)) and w.queued == 0


def test_a_job_seen_running_counts_and_one_gone_frees_its_place():
    w, woken = window(1)
    w.settle(md(1), "j1")
    assert not w.take(md(2), "j2")
    w.settle(md(1), None)
    assert woken == ["m2"]


# --- the plan's part ------------------------------------------------------------------------


def test_a_full_window_queues_the_download_and_makes_no_job():
    m, r = make_md(), gguf()
    w, _ = window(1)
    assert w.take((NS, "other"), "someone-elses-job")
    p = plan(m, r, Observed(pvc=obs_pvc(m, r), service=obs_service(m)), settings(), T0, ENDPOINT, window=w)
    job = manifests.download_job(m, r, ENDPOINT, settings())["metadata"]["name"]
    assert ("Job", job) not in applied(p) and p.download_job is None
    d, ready = cond(p, "Downloaded"), cond(p, "Ready")
    assert (d["status"], d["reason"]) == ("False", "DownloadQueued") and ready["reason"] == "DownloadQueued"
    assert "1 downloads run at once" in d["message"] and "maxConcurrentDownloads" in d["message"] and job in d["message"]
    assert p.status["phase"] == "Downloading" and p.requeue_after == 60.0
    assert w.queued == 1
    w.settle((NS, "other"), None)  # the other Job ends: this one's turn
    p = plan(m, r, Observed(pvc=obs_pvc(m, r), service=obs_service(m)), settings(), T0, ENDPOINT, window=w)
    assert ("Job", job) in applied(p) and p.download_job == job and cond(p, "Downloaded")["reason"] == "Downloading"


def test_a_running_or_finished_job_needs_no_place():
    m, r = make_md(), gguf()
    w, _ = window(1)
    w.take((NS, "other"), "someone-elses-job")
    running = Observed(pvc=obs_pvc(m, r), service=obs_service(m), jobs=[obs_job(m, r, "Running")])
    p = plan(m, r, copy.deepcopy(running), settings(), T0, ENDPOINT, window=w)
    job = manifests.download_job(m, r, ENDPOINT, settings())["metadata"]["name"]
    assert cond(p, "Downloaded")["reason"] == "Downloading" and p.download_job == job and w.queued == 0
    done = Observed(pvc=obs_pvc(m, r), service=obs_service(m), jobs=[obs_job(m, r, "Complete")])
    p = plan(m, r, done, settings(), T0, ENDPOINT, window=w)
    assert cond(p, "Downloaded")["reason"] == "Downloaded" and p.download_job is None and w.queued == 0

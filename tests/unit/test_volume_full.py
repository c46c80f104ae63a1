"""A volume that fills up mid-download: `modelship fetch` stops at once with one line and exit
code 28 (no retries: another try would find it as full), the download Job fails at once on
that code (its podFailurePolicy), and the operator says VolumeFull with what to do, then
deletes the failed Job after VOLUME_FULL_RETRY seconds so that a new one resumes."""

from __future__ import annotations

import errno
import os

import pytest

from modelship import manifests, weights
from modelship.reconcile.observe import downloads_to_follow
from modelship.reconcile.download import VOLUME_FULL_RETRY
from modelship.reconcile.types import Reads

from .test_fetch import GGUF, SHA, hub, run as fetch_run, spec  # noqa: F401 - the fixture
from .test_plan import ENDPOINT, T0, cond, gguf, make_md, obs_job, observed, run, settings

FAILED_AT = "2025-01-01T00:00:00Z"


def full_after(limit: int):
    """A Sink that takes `limit` bytes of a file and then finds the disk full."""
    from modelship.weights.hashing import Sink

    class FullSink(Sink):
        def fill(self, r):
            n = super().fill(r)
            if os.fstat(self.fd).st_size > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            return n

    return FullSink


def test_a_full_volume_stops_the_download_at_once_with_one_line(hub, tmp_path, monkeypatch):
    monkeypatch.setattr("modelship.weights.fetch.Sink", full_after(1 << 20))
    with pytest.raises(weights.VolumeFull) as e:
        fetch_run(hub, tmp_path, [spec("m-Q4_K_M.gguf", GGUF)])
    message = str(e.value)
    assert message.startswith("the volume is full: no space left writing m-Q4_K_M.gguf (")
    assert f"of {len(GGUF)} bytes written;" in message and f"bytes free on {tmp_path}" in message
    assert message.endswith("grow the claim or free space on it; the download then resumes from the bytes "
                            "already there")
    assert e.value.exit_code == weights.VOLUME_FULL_EXIT == 28
    gets = [r for r in hub.requests if r[0] == "GET" and ("m-Q4_K_M.gguf" in r[1] or r[1].startswith("/cdn/"))]
    assert len(gets) == 2, gets  # one resolve (redirect) and one CDN GET: no retries
    partial = list((tmp_path / "models--org--m" / "blobs").glob("*.incomplete"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # kept, for the next Job to resume


def test_the_command_exits_28_on_a_full_volume(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from modelship.cli import main

    def full(*a, **kw):
        raise weights.VolumeFull("the volume is full: no space left writing x")

    monkeypatch.setattr("modelship.weights.download", full)
    result = CliRunner().invoke(main, ["fetch", "--repo", "org/m", "--revision", SHA, "--dest", str(tmp_path),
                                       "--file", "1::a"])
    assert result.exit_code == 28
    assert result.output == "Error: the volume is full: no space left writing x\n"


def test_the_download_job_fails_at_once_on_exit_code_28():
    md, r = make_md(), gguf()
    job = manifests.download_job(md, r, ENDPOINT, settings())
    assert job["spec"]["podFailurePolicy"] == {"rules": [{"action": "FailJob", "onExitCodes": {
        "containerName": "fetch", "operator": "In", "values": [28]}}]}
    assert job["spec"]["template"]["spec"]["containers"][0]["name"] == "fetch"
    assert manifests.VOLUME_FULL_EXIT == weights.VOLUME_FULL_EXIT  # the builders import no program
    collect = manifests.collect_job(md, settings(), [])
    assert "podFailurePolicy" not in collect["spec"]


def full_job(md, r, failed_at: str = FAILED_AT) -> dict:
    job = obs_job(md, r, "Failed")
    name = job["metadata"]["name"]
    job["status"]["conditions"] = [{
        "type": "Failed", "status": "True", "reason": "PodFailurePolicy", "lastTransitionTime": failed_at,
        "message": f"Container fetch for pod ns/{name}-x1 failed with exit code 28 matching FailJob rule at index 0"}]
    return job


def test_a_job_stopped_by_a_full_volume_gives_volume_full_then_is_made_again():
    md, r = make_md(), gguf()
    obs = observed(md, r, None)
    obs.jobs = [full_job(md, r)]
    name = obs.jobs[0]["metadata"]["name"]
    said = "Error: the volume is full: no space left writing m.gguf (5 of 9 bytes written; 0 of 5 bytes free on /models)"
    obs.download_errors = {name: said}
    p = run(md, r, obs, now="2025-01-01T00:00:10Z")
    claim = manifests.claim_name(md)
    for type_ in ("Ready", "Downloaded"):
        c = cond(p, type_)
        assert (c["status"], c["reason"]) == ("False", "VolumeFull")
        assert c["message"] == (
            f"volume {claim} is full: download Job {name} stopped (the volume is full: no space left writing m.gguf "
            f"(5 of 9 bytes written; 0 of 5 bytes free on /models)); grow the claim (spec.storage.size, or the "
            f"existing claim) or free space on it: the download is tried again every 30 s and resumes from the "
            f"bytes already there")
    assert p.status["phase"] == "Failed"
    assert p.actions == [] and p.requeue_after == VOLUME_FULL_RETRY - 10
    later = run(md, r, obs, now="2025-01-01T00:00:30Z")
    assert [(a.verb, a.kind, a.name) for a in later.actions] == [("delete", "Job", name)]
    assert cond(later, "Ready")["reason"] == "VolumeFull"
    # a node that keeps no termination message: only the exit code is known, and not repeated
    obs.download_errors = {name: "Error (exit code 28)"}
    bare = cond(run(md, r, obs, now="2025-01-01T00:00:10Z"), "Ready")["message"]
    assert bare.startswith(f"volume {claim} is full: download Job {name} stopped; grow the claim")
    # once it is gone, the same Job is made again (same name: it resumes on the same volume)
    obs.jobs, obs.download_errors = [], {}
    again = run(md, r, obs, now="2025-01-01T00:00:31Z")
    assert ("apply", "Job", name) in [(a.verb, a.kind, a.name) for a in again.actions]


def test_another_failure_with_exit_code_28_in_its_text_is_still_download_failed():
    md, r = make_md(), gguf()
    obs = observed(md, r, None)
    obs.jobs = [obs_job(md, r, "Failed", message="Job has reached the specified backoff limit (exit code 28)")]
    p = run(md, r, obs, now=T0)
    assert cond(p, "Ready")["reason"] == "DownloadFailed" and p.requeue_after is None


def test_failed_downloads_are_followed_for_their_pods_error_line():
    md, r = make_md(), gguf()
    reads = Reads(jobs=[full_job(md, r)])
    assert downloads_to_follow(md, reads) == [reads.jobs[0]["metadata"]["name"]]
    reads = Reads(jobs=[obs_job(md, r, "Complete")])
    assert downloads_to_follow(md, reads) == []


def test_the_failed_time_as_the_client_library_writes_it_is_read_too():
    """Jobs read through the kubernetes client come back with `+00:00`, not `Z` (the live
    operator failed on that: `clock.parse` read only the API server's form)."""
    md, r = make_md(), gguf()
    obs = observed(md, r, None)
    obs.jobs = [full_job(md, r, failed_at=FAILED_AT.replace("Z", "+00:00"))]
    name = obs.jobs[0]["metadata"]["name"]
    assert run(md, r, obs, now="2025-01-01T00:00:10Z").requeue_after == VOLUME_FULL_RETRY - 10
    assert [(a.verb, a.name) for a in run(md, r, obs, now="2025-01-01T00:00:30Z").actions] == [("delete", name)]


def test_joining_a_shared_download_applies_ones_owner_reference_alone():
    """A Job's template cannot change (422): a join applies its owner reference and nothing
    else, whether the Job was made by an older operator (no podFailurePolicy) or by a sharer
    whose template differs (pinned to the node of a ReadWriteOnce volume)."""
    first, r = make_md({"storage": {"sharedCache": True}}), gguf()
    raw = first.model_dump(by_alias=True, exclude_none=True)
    raw["metadata"].update(name="second", uid="uid-second")
    second = type(first).model_validate(raw)
    older = obs_job(first, r, "Running")
    older["spec"].pop("podFailurePolicy")
    pinned = obs_job(first, r, "Running")
    pinned["spec"]["template"]["spec"]["affinity"] = {"nodeAffinity": {}}
    for job in (older, pinned, obs_job(first, r, "Running")):
        obs = observed(second, r, None)
        obs.jobs = [job]
        [join] = [a for a in run(second, r, obs).actions if a.kind == "Job"]
        assert (join.verb, join.name, join.exists) == ("apply", job["metadata"]["name"], True)
        assert set(join.body) == {"apiVersion", "kind", "metadata"} and "spec" not in join.body
        assert [o["uid"] for o in join.body["metadata"]["ownerReferences"]] == ["uid-second"]
        assert join.field_manager == "modelship/ns1/second"

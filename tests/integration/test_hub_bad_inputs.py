"""Bad Hub inputs through the real operator on the test bed: each ends in a Ready condition with
its reason and message; a download that fails for good ends in a Failed Job (bounded retries,
a deadline) and DownloadFailed; deleting the ModelDeployment completes at once (no finalizer)
and leaves no volume the user did not ask to keep. The full table is in
tests/unit/test_hub_bad_inputs.py and test_fetch_faults.py (the Job's own refusals are
tested there: on the test bed the Jobs run the checkout the test bed was started from)."""

from __future__ import annotations

import json
import time

import pytest

from ..conftest import wait_for
from .conftest import children, claim_path, condition, wait_phase
from .test_operator import get, tiny

pytestmark = [pytest.mark.integration, pytest.mark.localnode]

SHA = "d" * 40


def test_bad_inputs_end_in_conditions_and_leave_nothing_behind(cluster, namespace, local_operator, fake_hub,
                                                               kwok_pools, local_node):
    # The operator as a process of this checkout (the chart's pods run the test bed's own
    # checkout); its download Jobs run on the local node.
    operator = local_operator
    from modelship_testbed.hub_fake import FakeRepo

    fake_hub.add_repo(FakeRepo("hub-bad/unsafe-GGUF", {SHA: {"../../m-Q4_K_M.gguf": b"x" * 100}}, {"main": SHA}))
    fake_hub.add_repo(FakeRepo("hub-bad/docs", {SHA: {"README.md": b"# no weights"}}, {"main": SHA}))
    fake_hub.add_repo(FakeRepo("hub-bad/corrupt-GGUF", {SHA: {"c-Q4_K_M.gguf": b"weights" * 1000}}, {"main": SHA}))
    fake_hub.corrupt.add("c-Q4_K_M.gguf")
    operator.start(pools=kwok_pools, config={"downloadBackoffLimit": 1})
    cases = {"missing": "hub-bad/nope", "badrev": "hub-bad/docs", "unsafe": "hub-bad/unsafe-GGUF",
             "nothing": "hub-bad/docs", "corrupt": "hub-bad/corrupt-GGUF"}
    for name, repo in cases.items():
        md = tiny(name, repo=repo)
        if name == "badrev":
            md["spec"]["model"]["revision"] = "v9"
        cluster.apply(md, namespace)
    url = fake_hub.url
    expected = {
        "missing": ("RepoNotFound", f"hub-bad/nope on {url} does not exist: check spec.model.repo; if it is "
                                    f"private, set spec.model.tokenSecretRef"),
        "badrev": ("RevisionNotFound", f"hub-bad/docs on {url} has no branch, tag or commit 'v9': check "
                                       f"spec.model.revision"),
        "unsafe": ("UnsafeFileName", "hub-bad/unsafe-GGUF@main has a file named '../../m-Q4_K_M.gguf' that cannot "
                                     "be written safely (it has an empty, '.' or '..' component); it is needed to "
                                     "serve the model, so the repository cannot be served: fix the name on the "
                                     "Hub, or choose other files (spec.model.quantization or files)"),
        "nothing": ("NoServableFiles", "hub-bad/docs@main has no GGUF, safetensors or PyTorch weights to serve "
                                       "(files: README.md)"),
    }
    for name, (reason, message) in expected.items():
        st = wait_phase(cluster, operator, name, "Failed")
        ready = condition(st, "Ready")
        assert (ready["status"], ready["reason"], ready["message"]) == ("False", reason, message), name
        assert children(cluster, namespace, name)["jobs"] == []  # nothing downloaded

    # A download that fails for good: bounded retries and a deadline, then Failed with the pod's line.
    st = wait_phase(cluster, operator, "corrupt", "Failed", timeout=240)
    ready = condition(st, "Ready")
    job_name = children(cluster, namespace, "corrupt")["jobs"][0]
    assert ready["reason"] == "DownloadFailed", ready
    # (a real kubelet also gives the pod's last line as its termination message, which the
    # condition quotes; the test bed's local node keeps none, so the log says it here)
    assert ready["message"].startswith(f"download Job {job_name} failed (BackoffLimitExceeded: "), ready
    assert ready["message"].endswith(f"; see `kubectl logs job/{job_name}`, fix the cause, then delete the Job "
                                     f"to retry"), ready
    said = cluster.kubectl("logs", f"job/{job_name}", "-n", namespace, check=False)
    assert "c-Q4_K_M.gguf: sha256 " in said and "(twice): the source serves corrupt data" in said, said
    job = get(cluster, "job", job_name, namespace)
    assert job["spec"]["backoffLimit"] == 1 and job["spec"]["activeDeadlineSeconds"] == 6 * 3600
    assert any(c["type"] == "Failed" and c["status"] == "True" for c in job["status"]["conditions"])
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", f"job-name={job_name}", "-o",
                                      "json"))["items"]
    assert len(pods) == 2  # backoffLimit 1: two pods, then no more
    claim = children(cluster, namespace, "corrupt")["persistentvolumeclaims"][0]
    blobs = claim_path(cluster, namespace, claim) / "models--hub-bad--corrupt-GGUF" / "blobs"
    assert not list(blobs.glob("*")), list(blobs.glob("*"))  # the bad partial file was deleted
    time.sleep(25)  # a resync later, still the same Job: no new one, no retry storm
    assert children(cluster, namespace, "corrupt")["jobs"] == [job_name]

    # Deleting completes at once (no finalizer) and takes the volume the operator made with it.
    for name in cases:
        assert not get(cluster, "md", name, namespace)["metadata"].get("finalizers")
    started = time.monotonic()
    cluster.kubectl("delete", "md", *cases, "-n", namespace, "--timeout=30s")
    assert time.monotonic() - started < 30
    wait_for(lambda: not any(children(cluster, namespace, n)["persistentvolumeclaims"]
                             or children(cluster, namespace, n)["jobs"] for n in cases), 60,
             "the volumes and Jobs of the deleted ModelDeployments to go",
             lambda: cluster.kubectl("get", "pvc,job", "-n", namespace, check=False))

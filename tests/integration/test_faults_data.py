"""Faults on the way to the weights: the download pod killed mid-file, and the volume filling
up mid-download (a real full filesystem: a small tmpfs under a PersistentVolume of our own).

The operator is `local_operator` (this checkout's code); the download Job's pod runs on the
local node (a real `modelship fetch` process, from the environment the local node runs);
serving pods go to a kwok pool of the test's own (they never take traffic here)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from ..conftest import wait_for
from .conftest import condition, md_status, wait_phase

pytestmark = [pytest.mark.integration]

MiB = 1 << 20


def weights_of(size: int, seed: str) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 2048  # 64 KiB, not compressible to nothing
    return (block * (size // len(block) + 1))[:size]


def hub_model(fake_hub, name: str, data: bytes) -> tuple[str, str]:
    """A repo of one GGUF file on the fake Hub; (repo, file name). Names are unique per test:
    the fake Hub counts bytes per file name."""
    from modelship_testbed.hub_fake import FakeRepo

    sha = hashlib.sha1(name.encode()).hexdigest()
    repo, file = f"hub-faults/{name}-GGUF", f"{name}-Q4_K_M.gguf"
    fake_hub.add_repo(FakeRepo(repo, {sha: {file: data}}, {"main": sha}))
    return repo, file


def md(name: str, repo: str, **storage) -> dict:
    return {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"repo": repo}, **({"storage": storage} if storage else {})}}


def job_pods(cluster, ns: str) -> list[dict]:
    pods = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=download",
                                      "-o", "json"))["items"]
    return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])


@pytest.mark.localnode
@pytest.mark.slow
def test_download_pod_killed_mid_file_resumes_and_verifies(cluster, namespace, local_node, local_operator,
                                                           fake_hub, kwok_pools, monkeypatch):
    """The Job's pod is force-deleted a quarter into an 8 MiB file; the Job's next pod asks
    the Hub for the rest only (a Range from where the first stopped), the file is verified, and
    the ModelDeployment becomes Ready. Fewer than 1.5x the file's bytes cross the wire."""
    data = weights_of(8 * MiB, "killed")
    repo, file = hub_model(fake_hub, f"killed{uuid.uuid4().hex[:4]}", data)
    monkeypatch.setattr(fake_hub, "chunk_delay", 0.1)  # 128 pieces of 64 KiB: ~13 s for the file
    local_operator.start(pools=kwok_pools)
    cluster.apply(md("killed", repo), namespace)
    wait_for(lambda: fake_hub.served.get(file, 0) >= 2 * MiB, 60, "a quarter of the file to be served",
             lambda: cluster.kubectl("get", "md,job,pod", "-n", namespace, check=False))
    first = job_pods(cluster, namespace)[0]["metadata"]["name"]
    cluster.kubectl("delete", "pod", first, "-n", namespace, "--grace-period=0", "--force", "--wait=false")
    killed_at = fake_hub.served[file]
    st = wait_phase(cluster, local_operator, "killed", "Ready", timeout=120)
    ranges = [start for path, start in fake_hub.ranges if path == file]
    print(f"killed after {killed_at} bytes served; GETs from {ranges}; {fake_hub.served[file]} bytes in all")
    assert ranges[0] == 0 and len(ranges) >= 2
    assert 0 < ranges[-1] < len(data), ranges  # the next pod resumed: it did not start over
    assert fake_hub.served[file] < 1.5 * len(data)
    assert st["download"]["bytesDone"] == len(data) and condition(st, "Downloaded")["status"] == "True"
    pods = [p["metadata"]["name"] for p in job_pods(cluster, namespace)]
    assert first not in pods and len(pods) >= 1  # another pod of the same Job did it


@contextmanager
def small_filesystem(size: str):
    """A tmpfs of `size` (the volume that fills up); unmounted afterwards. Needs root."""
    path = Path(f"/tmp/modelship-full-{uuid.uuid4().hex[:6]}")
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def grow(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def test_fetch_on_a_really_full_filesystem_stops_with_one_line_then_resumes(fake_hub, tmp_path):
    """`modelship fetch` (this checkout's) onto a 2 MiB tmpfs for a 3 MiB file: exit code 28,
    one line saying the volume is full, the partial file kept; the filesystem grown, the next
    run asks only for the rest and verifies the file."""
    data = weights_of(3 * MiB, "tmpfs")
    repo, file = hub_model(fake_hub, f"tmpfs{uuid.uuid4().hex[:4]}", data)
    sha = hashlib.sha1(repo.removeprefix("hub-faults/").removesuffix("-GGUF").encode()).hexdigest()
    cmd = [str(Path(sys.executable).with_name("modelship")), "fetch", "--repo", repo, "--revision", sha,
           "--endpoint", fake_hub.url, "--file", f"{len(data)}:{hashlib.sha256(data).hexdigest()}:{file}"]
    with small_filesystem("2m") as dest:
        first = subprocess.run([*cmd, "--dest", str(dest)], capture_output=True, text=True, timeout=60)
        assert first.returncode == 28, first.stderr
        error = first.stderr.strip().splitlines()[-1]
        assert error.startswith(f"Error: the volume is full: no space left writing {file} (")
        assert error.endswith("grow the claim or free space on it; the download then resumes from the bytes "
                              "already there")
        assert "retrying" not in first.stderr  # no retries into a full disk
        partial = next((dest / f"models--{repo.replace('/', '--')}" / "blobs").glob("*.incomplete"))
        kept = partial.stat().st_size
        assert 1 * MiB < kept < len(data)
        grow(dest, "8m")
        second = subprocess.run([*cmd, "--dest", str(dest)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        snap = dest / f"models--{repo.replace('/', '--')}" / "snapshots" / sha / file
        assert snap.read_bytes() == data
    ranges = [start for path, start in fake_hub.ranges if path == file]
    assert ranges == [0, kept], ranges


def full_claim(cluster, core, namespace: str, path: Path) -> str:
    """A PersistentVolume of ours on `path` (hostPath) and a claim bound to it."""
    pv = f"full-{namespace}"[:60]
    core.create_persistent_volume({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                                   "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                                            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                                            "hostPath": {"path": str(path)}}})
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "small"},
                   "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv,
                            "resources": {"requests": {"storage": "1Gi"}}}}, namespace)
    return pv


@pytest.mark.localnode
@pytest.mark.slow
def test_volume_full_mid_download_says_so_and_recovers_when_grown(cluster, core, namespace, local_node,
                                                                  local_operator, fake_hub, kwok_pools):
    """A 6 MiB file onto a claim whose filesystem holds 3 MiB: the Job stops at once (one pod,
    exit code 28), the ModelDeployment says VolumeFull with the bytes and what to do; the
    filesystem grown, the operator's next Job resumes (a Range from the bytes there) and the
    ModelDeployment becomes Ready."""
    data = weights_of(6 * MiB, "full")
    repo, file = hub_model(fake_hub, f"full{uuid.uuid4().hex[:4]}", data)
    with small_filesystem("3m") as path:
        pv = full_claim(cluster, core, namespace, path)
        try:
            local_operator.start(pools=kwok_pools)
            cluster.apply(md("full", repo, existingClaim="small"), namespace)
            st = wait_for(lambda: (s := md_status(cluster, namespace, "full")) and
                          condition(s, "Ready").get("reason") == "VolumeFull" and s, 90, "VolumeFull",
                          lambda: cluster.kubectl("get", "md,job,pod", "-n", namespace, check=False)
                          + json.dumps(md_status(cluster, namespace, "full"), indent=1))
            message = condition(st, "Ready")["message"]
            print(message)
            assert st["phase"] == "Failed" and condition(st, "Downloaded")["reason"] == "VolumeFull"
            assert message.startswith("volume small is full: download Job ")
            # (the pod's own line, with the bytes written and free, is quoted where the node keeps
            # termination messages; the test bed's local node does not)
            assert message.endswith("grow the claim (spec.storage.size, or the existing claim) or free space on "
                                    "it: the download is tried again every 30 s and resumes from the bytes already "
                                    "there")
            assert len(job_pods(cluster, namespace)) == 1  # failed at once: no pod retries into a full disk
            served_before = fake_hub.served[file]
            grow(path, "16m")
            st = wait_phase(cluster, local_operator, "full", "Ready", timeout=120)
            ranges = [start for p, start in fake_hub.ranges if p == file]
            print(f"GETs from {ranges}; {fake_hub.served[file]} bytes served in all ({served_before} before)")
            assert ranges[0] == 0 and ranges[-1] > 1 * MiB, ranges  # resumed
            assert condition(st, "Downloaded")["status"] == "True"
        finally:
            cluster.kubectl("delete", "md", "full", "-n", namespace, "--wait=true", "--timeout=60s", check=False)
            cluster.kubectl("delete", "pvc", "small", "-n", namespace, "--wait=false", check=False)
            cluster.kubectl("delete", "pv", pv, "--wait=false", check=False)
            time.sleep(2)  # the Job's pod's process leaves the mount before it goes

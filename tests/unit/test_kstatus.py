"""A ModelDeployment's status as kstatus reads it (sigs.k8s.io/cli-utils, the library behind
Flux's and kpt's health): the real library, built by the test bed (`kstatus`), against the
statuses of every phase and `Ready` reason, with the `Reconciling` and `Stalled` conditions the
operator adds to them (`reconcile/status.progress`)."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

from modelship.reconcile.status import progress

from .test_argocd_health import CASES

EXPECTED = {"Ready": "Current", "Failed": "Failed"}  # any other phase: InProgress


def kstatus_binary():
    from modelship_testbed import binaries

    found = binaries.find("kstatus")
    if found is None:
        pytest.skip("kstatus is not built here (modelship testbed build)")
    return found


def with_progress(obj: dict) -> dict:
    """The object as the operator writes it: `Reconciling` and `Stalled` beside `Ready`."""
    obj = copy.deepcopy(obj)
    status = obj.get("status")
    if status:
        for c in status["conditions"]:
            c.setdefault("lastTransitionTime", "2026-12-01T00:00:00Z")
        progress(status["conditions"], status["phase"], obj["metadata"]["generation"], "2026-12-01T00:00:00Z")
    return obj


def test_kstatus_says_what_ready_says():
    names = list(CASES)
    objects = [with_progress(CASES[n][0]) for n in names]
    out = subprocess.run([str(kstatus_binary())], input=json.dumps(objects), capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    said = [json.loads(line) for line in out.stdout.splitlines()]
    wrong = []
    for name, obj, got in zip(names, objects, said):
        status = obj.get("status")
        if status is None:  # kstatus' own rule for an object no controller has written to yet: it cannot
            want = "Current"  # tell (the operator writes a status within a second of a create)
        elif status.get("observedGeneration", 0) < obj["metadata"]["generation"]:
            want = "InProgress"
        else:
            want = EXPECTED.get(status["phase"], "InProgress")
        if got["status"] != want:
            wrong.append((name, want, got))
    assert not wrong, wrong
    failed = next(s for n, s in zip(names, said) if n == "failed: PoolNotFound")
    assert "what to fix for PoolNotFound" in failed["message"]  # Stalled carries Ready's message

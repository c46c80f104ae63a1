"""The Argo CD health check shipped for ModelDeployments (charts/modelship/files/argocd-health.lua),
run by a real Lua interpreter (Debian's `lua5.1`: Argo CD's gopher-lua is Lua 5.1) with only the
libraries Argo CD opens for a health check (base, table and a safe os: no string, no math), against
status objects of every phase and
`Ready` reason the operator writes (docs/reference.md lists them; a reason added there without a
case here fails `test_every_ready_reason_has_a_case`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "charts" / "modelship" / "files" / "argocd-health.lua"
LUA = shutil.which("lua5.1")
# Argo CD's sandbox (util/lua/lua.go): the base and table libraries and a safe os, nothing else;
# and without the string library strings have no methods either.
SANDBOX = """
local check = assert(loadfile(arg[1]))
local env = {obj = obj, table = table, os = {time = os.time, date = os.date, clock = os.clock}}
for _, name in ipairs({"assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "print", "rawequal",
                       "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring", "type", "unpack",
                       "xpcall", "_VERSION"}) do
  env[name] = _G[name]
end
env._G = env
setfenv(check, env)
local methods = getmetatable("").__index
getmetatable("").__index = nil
local hs = check()
getmetatable("").__index = methods
io.write(hs.status, "\t", hs.message or "")
"""

# Ready reason -> (phase, Ready status) as the operator writes them (reconcile/plan.py, status.py).
FAILED = ["PoolNotFound", "PoolHasNoGPUs", "TooManyGPUs", "GPUsRequired", "EngineMismatch", "StorageTooSmall",
          "SettingNotForEngine", "SharedCacheEndpoint", "ResourceConflict", "ApplyRejected", "DownloadFailed",
          "VolumeFull", "InvalidRepo", "RepoNotFound", "RevisionNotFound", "QuantizationNotFound", "GatedRepo",
          "Unauthorized", "NoServableFiles", "HubError", "UnsafeFileName"]
RETRIED = ["Resolving", "HubUnreachable", "HubUnavailable", "HubBadAnswer", "SecretNotFound", "CatalogUnreadable",
           "FollowCheckFailed", "RevisionMoved"]


def md(phase: str | None, reason: str | None = None, ready: str = "False", message: str = "", generation: int = 3,
       observed: int | None = 3, autoscaled: bool = False, **status) -> dict:
    obj = {"apiVersion": "modelship.io/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "m", "namespace": "ns", "generation": generation},
           "spec": {"model": {"repo": "org/m"}, **({"maxReplicas": 3, "minReplicas": 0} if autoscaled else {})}}
    if phase is not None:
        obj["status"] = {"phase": phase, "observedGeneration": observed, **status, "conditions": [
            {"type": "Resolved", "status": "True", "reason": "Resolved", "message": "pinned"},
            *([{"type": "Ready", "status": ready, "reason": reason, "message": message}] if reason else [])]}
    return obj


CASES = {
    "new: no status yet": (md(None), "Progressing", "Waiting for the operator"),
    "a spec the operator has not read": (md("Ready", "Ready", "True", observed=2), "Progressing", "generation 3"),
    "ready": (md("Ready", "Ready", "True", "2/2 replicas ready"), "Healthy", "Ready: 2/2 replicas ready"),
    "ready while the autoscaler scales": (md("Ready", "Ready", "True", "1/3 replicas ready; scaling up",
                                             autoscaled=True), "Healthy", "scaling up"),
    "asleep at zero by the autoscaler": (md("Ready", "ScaledToZero", "True", "scaled to zero by the autoscaler",
                                            autoscaled=True), "Healthy", "ScaledToZero"),
    "replicas: 0 on purpose": (md("Ready", "ScaledToZero", "True", "replicas is 0"), "Suspended", "replicas is 0"),
    "waking from zero": (md("Starting", "Waking", message="waking from zero: 1/1 started", autoscaled=True),
                         "Progressing", "Waking: waking from zero"),
    "rolling out": (md("Starting", "RollingOut", message="1/2 updated"), "Progressing", "RollingOut"),
    "some replicas not ready": (md("Degraded", "ReplicasNotReady", message="1/2 replicas ready"), "Progressing",
                                "ReplicasNotReady: 1/2"),
    "pods crash": (md("Starting", "CrashLoopBackOff", message="0/1 replicas ready; pod m-1: CrashLoopBackOff (last "
                                                             "exit code 1)"), "Degraded", "CrashLoopBackOff: 0/1"),
    "downloading": (md("Downloading", "Downloading", message="downloading", download={
        "bytesDone": 52428800, "bytesTotal": 104857600, "percent": 50, "etaSeconds": 12}), "Progressing",
        "Downloading: 50% (50.0 of 100.0 MiB, about 12 s left)"),
    "downloading, sizes as they come": (md("Downloading", "Downloading", message="downloading", download={
        "bytesDone": 12345678, "bytesTotal": 102891839.0, "percent": 12.0}), "Progressing",
        "Downloading: 12% (11.7 of 98.1 MiB)"),
    "downloading, size not known yet": (md("Downloading", "Downloading", message="the Job starts"), "Progressing",
                                        "Downloading: the Job starts"),
    "waiting for collection": (md("Downloading", "WaitingForCollection", message="collecting"), "Progressing",
                               "WaitingForCollection"),
    "a claim to be made": (md("Pending", "ClaimNotFound", message="create it"), "Progressing", "ClaimNotFound"),
    **{f"failed: {r}": (md("Failed", r, message=f"what to fix for {r}"), "Degraded", f"{r}: what to fix")
       for r in FAILED},
    **{f"retried: {r}": (md("Resolving", r, message="tried again"), "Progressing", f"{r}: tried again")
       for r in RETRIED},
}


def lua_table(value) -> str:
    """A JSON-like value as a Lua table constructor (as Argo CD hands `obj` to the script)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_table(k)}] = {lua_table(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(lua_table(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def health(obj: dict, script: Path = SCRIPT) -> tuple[str, str]:
    program = f"obj = {lua_table(obj)}\n{SANDBOX}"
    out = subprocess.run([LUA, "-", str(script)], input=program, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    status, _, message = out.stdout.partition("\t")
    return status, message


needs_lua = pytest.mark.skipif(LUA is None, reason="needs Debian's lua5.1 (apt-get install lua5.1; .ci/run installs it)")


@needs_lua
def test_the_sandbox_refuses_what_argo_cd_does_not_open(tmp_path):
    for body in ('return {status = string.format("%d", 1)}', 'return {status = ("x"):upper()}',
                 'return {status = tostring(math.floor(1.5))}'):
        (tmp_path / "check.lua").write_text(body)
        with pytest.raises(AssertionError, match="attempt to"):
            health(md(None), tmp_path / "check.lua")


@needs_lua
@pytest.mark.parametrize("name", list(CASES))
def test_health_of_every_phase_and_reason(name):
    obj, status, fragment = CASES[name]
    got = health(obj)
    assert got[0] == status and fragment in got[1], got


def test_every_ready_reason_has_a_case():
    text = (REPO / "docs" / "reference.md").read_text()
    table = text.split("| `Ready` |", 1)[1].split("| `Reconciling`", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Za-z]+)`", table)) - {"Resolved", "True", "Degraded"}  # (words)
    covered = {obj["status"]["conditions"][-1]["reason"] for obj, _, _ in CASES.values()
               if obj.get("status") and len(obj["status"]["conditions"]) > 1}
    assert documented <= covered | set(RETRIED) | set(FAILED), sorted(documented - covered)
    # Every resolution reason is either a failure for good (Degraded) or one retried (Progressing).
    rows = text.split("| `Resolved` |", 1)[1].split("| `Downloaded`", 1)[0]
    reasons = {r for line in rows.splitlines() for r in re.findall(r"`([A-Z][A-Za-z]+)`", line.split("|")[2])}
    assert len(reasons) > 10 and reasons - {"Resolved"} <= set(FAILED) | set(RETRIED), sorted(reasons)


def test_the_docs_carry_the_script_unchanged():
    text = (REPO / "docs" / "gitops.md").read_text()
    block = text.split("resource.customizations.health.modelship.io_ModelDeployment: |\n", 1)[1].split("```", 1)[0]
    script = "".join(line[6:] if line.strip() else "\n" for line in block.splitlines(True))
    assert script == SCRIPT.read_text()

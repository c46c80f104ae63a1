"""The test bed's API server audit log, read back: what each ServiceAccount asked for.

kube-apiserver writes `<state>/logs/audit.log` (JSON lines, rotated into `audit-<time>.log`
beside it) under the policy in `supervisor.AUDIT_POLICY`: Metadata for requests made by
ServiceAccounts outside kube-system, nothing else. Each request appears once when it
completes (`ResponseComplete`); a long-running one (a watch, a log stream) also when its
response starts (`ResponseStarted`), under the same `auditID`, which is how a request is
counted once here.

`requests_by(user)` gives one `Request` per auditID; `used(requests)` the distinct `Access`es
among them, the unit that RBAC grants (`least_privilege` compares the two).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator

from .paths import state_dir

LOG_NAME = "audit.log"


def service_account_user(namespace: str, name: str) -> str:
    """The user name a ServiceAccount's token authenticates as."""
    return f"system:serviceaccount:{namespace}:{name}"


@dataclass(frozen=True)
class Access:
    """One thing RBAC decides on: a verb on a resource (with its "/subresource") of an API group
    (core: ""), in a namespace or at cluster scope (namespace None: a cluster-scoped resource, a
    list or watch across all namespaces, or a non-resource URL, then `resource` is its path)."""

    api_group: str
    resource: str
    verb: str
    namespace: str | None
    non_resource: bool = False

    def __str__(self) -> str:
        if self.non_resource:
            return f"{self.verb} {self.resource}"
        where = f"in {self.namespace}" if self.namespace else "cluster-wide"
        return f"{self.verb} {self.resource}{'.' + self.api_group if self.api_group else ''} {where}"


@dataclass(frozen=True)
class Request:
    """One request as the audit log saw it."""

    audit_id: str
    time: datetime  # when the API server received it (aware, UTC)
    user: str
    verb: str  # the API verb (get, list, watch, create, ...); for a non-resource URL the HTTP method
    api_group: str
    resource: str  # "" for a non-resource URL
    subresource: str
    namespace: str | None
    name: str | None
    code: int | None  # the response's HTTP status (None: the log has no response for it yet)
    decision: str | None  # the authorizer's: "allow" or "forbid" (None: not recorded)
    reason: str  # the authorizer's reason (which binding allowed it), or the response's message
    uri: str
    user_agent: str = ""

    @property
    def non_resource(self) -> bool:
        return not self.resource

    @property
    def allowed(self) -> bool:
        """The authorizer let it through (it may still have failed later: 404, 409, admission)."""
        if self.decision is not None:
            return self.decision == "allow"
        return self.code not in (401, 403)

    @property
    def access(self) -> Access:
        if self.non_resource:
            return Access("", self.uri.split("?", 1)[0], self.verb, None, non_resource=True)
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return Access(self.api_group, resource, self.verb, self.namespace)


def log_files(directory: Path | None = None) -> list[Path]:
    """The audit log and its rotated backups, oldest first."""
    directory = directory or state_dir() / "logs"
    backups = sorted(directory.glob("audit-*.log"))  # lumberjack names them audit-<UTC time>.log
    current = directory / LOG_NAME
    return backups + ([current] if current.exists() else [])


def events(paths: Iterable[Path], containing: str = "") -> Iterator[dict]:
    """The audit events in these files (only lines `containing` that text, a cheap filter
    before parsing); a line still being written is skipped."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if containing not in line:
                        continue
                    try:
                        yield json.loads(line)
                    except ValueError:
                        continue
        except FileNotFoundError:  # rotated away between listing and reading
            continue


def requests_from(events_: Iterable[dict]) -> list[Request]:
    """One Request per auditID, in the order the API server received them."""
    first: dict[str, dict] = {}
    for e in events_:
        if e.get("stage") == "RequestReceived":
            continue
        seen = first.get(e["auditID"])
        if seen is None or ("responseStatus" not in seen and "responseStatus" in e):
            first[e["auditID"]] = e
    return sorted((to_request(e) for e in first.values()), key=lambda r: r.time)


def to_request(e: dict) -> Request:
    ref = e.get("objectRef") or {}
    status = e.get("responseStatus") or {}
    notes = e.get("annotations") or {}
    return Request(
        audit_id=e["auditID"], time=_time(e["requestReceivedTimestamp"]), user=(e.get("user") or {}).get("username", ""),
        verb=e.get("verb", ""), api_group=ref.get("apiGroup", ""), resource=ref.get("resource", ""),
        subresource=ref.get("subresource", ""), namespace=ref.get("namespace") or None, name=ref.get("name") or None,
        code=status.get("code"), decision=notes.get("authorization.k8s.io/decision"),
        reason=notes.get("authorization.k8s.io/reason") or status.get("message", ""), uri=e.get("requestURI", ""),
        user_agent=e.get("userAgent", ""))


def requests_by(user: str, since: datetime | None = None, directory: Path | None = None) -> list[Request]:
    """Every request `user` made (received at or after `since`, when given; a naive time is
    local time), from this test bed's audit log, rotated files included."""
    lines = events(log_files(directory), containing=json.dumps(user))  # (the log's JSON is compact)
    found = [r for r in requests_from(lines) if r.user == user]
    if since is not None:
        since = since.astimezone()  # aware either way, so it compares with the log's UTC times
        found = [r for r in found if r.time >= since]
    return found


def used(requests: Iterable[Request]) -> set[Access]:
    """The distinct accesses among the requests the authorizer let through."""
    return {r.access for r in requests if r.allowed}


def _time(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))

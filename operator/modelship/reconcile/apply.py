"""What to apply: a child is applied when it is absent, was built from another spec (the
applied hash), or was changed by hand since (drift). Comparing observed against desired
tolerates what the API server and other managers add."""

from __future__ import annotations

from .. import manifests
from ..manifests import APPLIED_HASH
from .types import Action


def contains(observed: object, desired: object) -> bool:
    """Whether everything `desired` says is in `observed` (which also holds the API server's
    defaults and other managers' fields)."""
    if isinstance(desired, dict):
        return isinstance(observed, dict) and all(k in observed and contains(observed[k], v)
                                                  for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(observed, list) and len(observed) == len(desired)
                and all(contains(o, d) for o, d in zip(observed, desired)))
    return observed == desired or str(observed) == str(desired)


def needs_apply(desired: dict, observed: dict | None) -> bool:
    """Absent, built from another spec (the applied hash), or changed by hand since (drift)."""
    if observed is None:
        return True
    have = (observed.get("metadata", {}).get("annotations") or {}).get(APPLIED_HASH)
    if have != desired["metadata"]["annotations"][APPLIED_HASH]:
        return True
    return not contains(observed.get("spec"), desired.get("spec"))


def apply_if_needed(body: dict, seen: dict | None) -> list[Action]:
    """Apply `body` unless `seen` (the object as observed) is it already. A co-owned object is
    applied with this ModelDeployment's own field manager, so every owner keeps its share."""
    if not needs_apply(body, seen):
        return []
    refs = body["metadata"].get("ownerReferences") or [{}]
    manager = None if refs[0].get("controller", True) else manifests.field_manager_of(refs[0], body)
    return [Action("apply", body["kind"], body["metadata"]["name"], body, exists=seen is not None,
                   field_manager=manager)]

"""A pod's volumes, made into local folders before its containers start.

emptyDir, Secret, ConfigMap, downwardAPI, projected (ServiceAccount token, Secret,
ConfigMap, downward API), hostPath and persistentVolumeClaim (the PV's hostPath or local
path) are supported. Secret and ConfigMap contents are written once at start (a real
kubelet also refreshes them later); the ServiceAccount token is refreshed before it expires.
"""

from __future__ import annotations

import base64
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

# (kind, namespace, name) -> the object as a dict (with `kind`), or None when it does not exist.
Getter = Callable[[str, str, str], Awaitable[dict | None]]
TokenRequester = Callable[[str, str, dict], Awaitable[tuple[str, int]]]


class VolumeError(Exception):
    """The pod cannot start with this volume; the message says why."""


class VolumePending(Exception):
    """Not yet: a claim not bound, a Secret not there. Retried, and shown in the pod's status."""


@dataclass
class Token:
    path: Path
    service_account: str
    spec: dict
    expires_in: int


@dataclass
class Volumes:
    paths: dict[str, Path] = field(default_factory=dict)
    read_only: set[str] = field(default_factory=set)  # read-only at the source (secrets, PVC readOnly)
    tokens: list[Token] = field(default_factory=list)


def downward_field(pod: dict, path: str) -> str | None:
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    if path.startswith("metadata.labels[") or path.startswith("metadata.annotations["):
        which = "labels" if "labels" in path else "annotations"
        key = path[path.index("[") + 1:-1].strip("'\"")
        return (meta.get(which) or {}).get(key, "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs") or []),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs") or []),
    }
    if path not in simple:
        raise VolumeError(f"unsupported downward API field {path!r}")
    return simple[path] or ""


_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
          "Ti": 2**40}


def quantity(q: str | int | float) -> float:
    s = str(q)
    for unit in sorted(_UNITS, key=len, reverse=True):
        if unit and s.endswith(unit):
            return float(s[: -len(unit)]) * _UNITS[unit]
    return float(s)


def resource_field(pod: dict, container: dict, ref: dict) -> str:
    name = ref.get("containerName")
    if name:
        container = next(c for c in pod["spec"]["containers"] if c["name"] == name)
    kind, _, res = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(res) or (resources.get("limits") or {}).get(res)
    if value is None:
        value = str(os.cpu_count()) if res == "cpu" else "0"
    divisor = quantity(ref.get("divisor") or "1")
    return str(math.ceil(quantity(value) / divisor))


def _write(dir: Path, rel: str, data: bytes, mode: int) -> None:
    target = (dir / rel).resolve()
    if not target.is_relative_to(dir.resolve()):
        raise VolumeError(f"volume item path {rel!r} points outside the volume")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(mode)


def key_items(obj: dict) -> dict[str, bytes]:
    """A Secret's or ConfigMap's keys and their bytes."""
    if obj.get("kind") == "Secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


async def _keyed(get: Getter, kind: str, ns: str, src: dict, dir: Path, default_mode: int) -> None:
    name = src.get("name") or src.get("secretName")
    obj = await get(kind, ns, name)
    if obj is None:
        if src.get("optional"):
            return
        raise VolumePending(f'{kind.lower()} "{name}" not found')
    data = key_items(obj)
    items = src.get("items")
    if items:
        for it in items:
            if it["key"] not in data:
                if src.get("optional"):
                    continue
                raise VolumePending(f'key {it["key"]!r} not found in {kind} {ns}/{name}')
            _write(dir, it["path"], data[it["key"]], it.get("mode", default_mode))
    else:
        for k, v in data.items():
            _write(dir, k, v, default_mode)


def _downward(pod: dict, items: list[dict], dir: Path, default_mode: int) -> None:
    for it in items:
        if "fieldRef" in it:
            value = downward_field(pod, it["fieldRef"]["fieldPath"]) or ""
        else:
            c = pod["spec"]["containers"][0]
            value = resource_field(pod, c, it["resourceFieldRef"])
        _write(dir, it["path"], value.encode(), it.get("mode", default_mode))


async def materialize(pod: dict, pod_dir: Path, get: Getter, request_token: TokenRequester) -> Volumes:
    ns = pod["metadata"]["namespace"]
    out = Volumes()
    for vol in pod["spec"].get("volumes") or []:
        name = vol["name"]
        target = pod_dir / "volumes" / name
        if "emptyDir" in vol:
            target.mkdir(parents=True, exist_ok=True)
        elif "secret" in vol or "configMap" in vol:
            kind = "Secret" if "secret" in vol else "ConfigMap"
            src = vol.get("secret") or vol.get("configMap")
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            await _keyed(get, kind, ns, src, target, src.get("defaultMode", 0o644))
            out.read_only.add(name)
        elif "downwardAPI" in vol:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            src = vol["downwardAPI"]
            _downward(pod, src.get("items") or [], target, src.get("defaultMode", 0o644))
            out.read_only.add(name)
        elif "projected" in vol:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            proj = vol["projected"]
            mode = proj.get("defaultMode", 0o644)
            for src in proj.get("sources") or []:
                if "serviceAccountToken" in src:
                    spec = src["serviceAccountToken"]
                    sa = pod["spec"].get("serviceAccountName") or "default"
                    token, ttl = await request_token(ns, sa, spec)
                    _write(target, spec["path"], token.encode(), mode)
                    out.tokens.append(Token(target / spec["path"], sa, spec, ttl))
                elif "secret" in src:
                    await _keyed(get, "Secret", ns, src["secret"], target, mode)
                elif "configMap" in src:
                    await _keyed(get, "ConfigMap", ns, src["configMap"], target, mode)
                elif "downwardAPI" in src:
                    _downward(pod, src["downwardAPI"].get("items") or [], target, mode)
                else:
                    raise VolumeError(f"volume {name}: unsupported projected source {sorted(src)}")
            out.read_only.add(name)
        elif "hostPath" in vol:
            hp = vol["hostPath"]
            target = Path(hp["path"])
            kind = hp.get("type", "")
            if kind == "DirectoryOrCreate":
                target.mkdir(parents=True, exist_ok=True)
            elif kind == "Directory" and not target.is_dir():
                raise VolumeError(f"volume {name}: hostPath {target} is not a directory")
            elif kind == "File" and not target.is_file():
                raise VolumeError(f"volume {name}: hostPath {target} is not a file")
        elif "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]
            pvc = await get("PersistentVolumeClaim", ns, claim["claimName"])
            if pvc is None:
                raise VolumePending(f'persistentvolumeclaim "{claim["claimName"]}" not found')
            if (pvc.get("status") or {}).get("phase") != "Bound":
                raise VolumePending(f'waiting for PersistentVolumeClaim "{claim["claimName"]}" to be bound')
            pv = await get("PersistentVolume", "", pvc["spec"]["volumeName"])
            if pv is None:
                raise VolumePending(f'persistentvolume "{pvc["spec"]["volumeName"]}" not found')
            src = pv["spec"].get("hostPath") or pv["spec"].get("local")
            if not src:
                raise VolumeError(f"volume {name}: PersistentVolume {pv['metadata']['name']} is neither hostPath "
                                  "nor local; the local node can mount only those")
            target = Path(src["path"])
            target.mkdir(parents=True, exist_ok=True)
            if claim.get("readOnly"):
                out.read_only.add(name)
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise VolumeError(f"volume {name}: type {kinds} is not supported by the local node")
        out.paths[name] = target
    return out

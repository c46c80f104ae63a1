"""A container's environment, resolved the way a kubelet does: `env` (value, and valueFrom
Secrets, ConfigMaps, the downward API and resource fields), `envFrom`, `$(VAR)` expansion,
and the in-cluster variables that point clients at the API server."""

from __future__ import annotations

import re

from .volumes import Getter, downward_field, key_items, resource_field


class EnvError(Exception):
    """CreateContainerConfigError: the message names what is missing."""


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes, the rest stays."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, s)


def _decode(obj: dict, key: str) -> str | None:
    raw = key_items(obj).get(key)
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise EnvError(f"key {key} of {obj.get('kind')} {obj['metadata']['name']} is not UTF-8 text; "
                       "mount it as a file instead of using it as an env var") from None


async def _key_ref(get: Getter, kind: str, ns: str, ref: dict, var: str) -> str | None:
    obj = await get(kind, ns, ref["name"])
    optional = ref.get("optional", False)
    if obj is None:
        if optional:
            return None
        raise EnvError(f'{kind.lower()} "{ref["name"]}" not found (env {var})')
    value = _decode(obj, ref["key"])
    if value is None and not optional:
        raise EnvError(f'couldn\'t find key {ref["key"]} in {kind} {ns}/{ref["name"]} (env {var})')
    return value


async def resolve(pod: dict, container: dict, get: Getter, service_env: dict[str, str]) -> dict[str, str]:
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = dict(service_env)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = src.get(key)
            if not ref:
                continue
            obj = await get(kind, ns, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f'{kind.lower()} "{ref["name"]}" not found (envFrom)')
            for k in key_items(obj):
                env[prefix + k] = _decode(obj, k) or ""
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        vf = var["valueFrom"]
        value: str | None
        if "secretKeyRef" in vf:
            value = await _key_ref(get, "Secret", ns, vf["secretKeyRef"], name)
        elif "configMapKeyRef" in vf:
            value = await _key_ref(get, "ConfigMap", ns, vf["configMapKeyRef"], name)
        elif "fieldRef" in vf:
            value = downward_field(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            value = resource_field(pod, container, vf["resourceFieldRef"])
        else:
            raise EnvError(f"env {name}: unsupported valueFrom {sorted(vf)}")
        if value is not None:
            env[name] = value
    return env

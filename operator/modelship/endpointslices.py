"""Reading an EndpointSlice: the base URL of each endpoint of a Service, and whether it is
ready. The router finds its engines this way, and the operator's autoscaler its routers."""

from __future__ import annotations

import ipaddress

SERVICE_NAME = "kubernetes.io/service-name"


def slice_endpoints(obj: dict, allowed: list | None = None) -> tuple[str | None, dict[str, bool]]:
    """(service name, {url: ready}) of one EndpointSlice. Terminating endpoints are left out:
    nothing new goes to them (requests open there finish), and a not-ready endpoint is then a
    pod that is starting (or failing its readiness probe), which a held request may probe.
    With `allowed` (ip_network objects), addresses outside them are left out."""
    service = (obj.get("metadata", {}).get("labels") or {}).get(SERVICE_NAME)
    port = next((p.get("port") for p in obj.get("ports") or [] if p.get("name") == "http"), None)
    if port is None:
        port = next((p.get("port") for p in obj.get("ports") or []), None)
    out: dict[str, bool] = {}
    if port is None or obj.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
        return service, out
    for ep in obj.get("endpoints") or []:
        cond = ep.get("conditions") or {}
        if cond.get("terminating"):
            continue
        ready = cond.get("ready") is not False
        for address in ep.get("addresses") or []:
            if allowed is not None:
                try:
                    ip = ipaddress.ip_address(address)
                except ValueError:
                    continue
                if not any(ip in net for net in allowed):
                    continue
            host = f"[{address}]" if ":" in address else address
            out[f"http://{host}:{port}"] = ready
    return service, out


def ready_urls(slices: list[dict]) -> list[str]:
    """The base URLs of every ready endpoint of these EndpointSlices."""
    return sorted({url for item in slices for url, ready in slice_endpoints(item)[1].items() if ready})

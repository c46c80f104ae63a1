"""What the API server answers the operator's requests: whether a failure is worth retrying,
an unparsed answer read to its end, the words of a refusal."""

from __future__ import annotations

import json

import urllib3
from kubernetes.client.rest import ApiException


def is_transient(e: Exception) -> bool:
    """Worth retrying: the API server is busy, away, or the object changed under us."""
    if isinstance(e, ApiException):
        return e.status in (0, 409, 429) or e.status >= 500
    return isinstance(e, (ConnectionError, TimeoutError, OSError, urllib3.exceptions.HTTPError))


def answer(response) -> bytes:
    """The body of an answer asked for with `_preload_content=False`, read to its end: only
    then does its connection go back to the pool. One left unread is closed when dropped, and
    the next request opens another, a TLS handshake on both sides: every Event posted did that
    (1,522 in a burst of 500 ModelDeployments, bench/README.md §7)."""
    return response.data


def refusal(e: ApiException) -> str:
    """The API server's own words for a refused request."""
    try:
        return json.loads(e.body).get("message") or str(e.reason)
    except (TypeError, ValueError):
        return f"{e.status} {e.reason}"

"""Time as the API server writes it: UTC, to the second, `2025-01-01T00:00:00Z` (RFC 3339)."""

from __future__ import annotations

import datetime as dt

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def now() -> str:
    return stamp(dt.datetime.now(dt.timezone.utc))


def stamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime(FORMAT)


def parse(text: str) -> dt.datetime:
    """Any RFC 3339 time: the API server's `...Z`, and the client library's `...+00:00` (its
    objects turned back into dicts); one without a zone is UTC."""
    moment = dt.datetime.fromisoformat(text)
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)


def seconds_since(text: str) -> float:
    return (dt.datetime.now(dt.timezone.utc) - parse(text)).total_seconds()

"""At most so many of the operator's requests in the API server at once (`apiInFlight`;
0, the default: no limit), and a timeout on every request whatever the limit.

A limit for an operator that shares its API server with others: in a burst of 500 new
ModelDeployments on the scale bench the operator sent 3,500-3,900 reconciles' worth of
requests with up to some 40 in flight (16 reconciles, their readers, the Event threads). With
at most 4 in flight it ran a third of the reconciles (a reconcile that waits for a slot
gathers the events that come meanwhile) on less CPU (16-20 s against 22-25 s); but each
ModelDeployment's Deployment came some 15-23 s later in the burst and its `Ready` 24-35 s, and all reconciled took as long (53-71 s against 65 s without, within the
bench's spread): bench/README.md §7, "Stop 35". Hence off by default.

Why a limit at all helps the Services: the API server allocates ClusterIPs one at a time (a
mutex held across a loopback create of the address's `IPAddress`), and that request shares
the CPU with every other in flight: 200 Services came at 96-219 a second alone, 15-26 while
4 threads wrote statuses, 9-12 with 8, 5-7 with 16; what the writes cost matters much less
(`bench/api_costs.py`, parts 3 and 4: 10-13 a second beside 8 writers whatever the CRD's rules).

Outside the limit (`ungated`): the Service applies, which have their own
(`background.SERVICE_APPLIES`), and the pod log reads, which the API server answers only once
it has heard from the kubelet.

A request without a timeout of its own gets TIMEOUT: a connection that hangs never holds a
slot, or a reconcile, for ever (urllib3 tries a GET again on its own, so a GET that times out
every time takes up to four times that). What a timeout raises is transient (`answers.is_transient`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from kubernetes import client

T = TypeVar("T")
TIMEOUT = (10.0, 60.0)  # seconds: to connect, and between two reads of the answer


class InFlight:
    def __init__(self, api_client: client.ApiClient, limit: int):
        """Gate every request `api_client` sends (0: no limit, the timeout still applies)."""
        self.limit = limit
        self.free = threading.local()  # `on` in a thread running `ungated`
        slots = threading.BoundedSemaphore(limit) if limit > 0 else None
        rest = api_client.rest_client
        send, free = rest.request, self.free

        def request(*args, **kwargs):
            if kwargs.get("_request_timeout") is None:
                kwargs["_request_timeout"] = TIMEOUT
            if slots is None or getattr(free, "on", False):
                return send(*args, **kwargs)
            with slots:  # (to the end of the answer: the client reads it after `request` returns)
                answer = send(*args, **kwargs)
                if hasattr(answer, "read"):
                    answer.read()
                return answer

        rest.request = request

    def ungated(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """fn(*args, **kwargs), its requests outside the limit."""
        before = getattr(self.free, "on", False)
        self.free.on = True
        try:
            return fn(*args, **kwargs)
        finally:
            self.free.on = before

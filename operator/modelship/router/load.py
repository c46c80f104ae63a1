"""What the router knows of each model's demand: the requests held for it while it wakes
from zero replicas, and the event that wakes them."""

from __future__ import annotations

import asyncio


class Demand:
    """One model's requests, as the router sees them. It follows the model's name: a target
    rebuilt by discovery keeps it."""

    __slots__ = ("held", "woken")

    def __init__(self) -> None:
        self.held = 0  # requests held waiting for a ready endpoint
        self.woken: asyncio.Event | None = None  # set when a ready endpoint appears (made by the first waiter)

    def wake(self) -> None:
        """Wake the requests held for this model (it has a ready endpoint, or it changed)."""
        woken, self.woken = self.woken, None
        if woken is not None:
            woken.set()

    def event(self) -> asyncio.Event:
        """The event the next `wake` sets (one per waiting spell: an event binds to its loop)."""
        if self.woken is None:
            self.woken = asyncio.Event()
        return self.woken

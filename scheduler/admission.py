"""Overload protection: past a number of concurrent calls, answer at once instead of queueing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class Admission:
    """Counts a service's calls in progress against its limit (event loop only, no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def try_enter(self) -> bool:
        """Take a slot, or False when the service is full."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        """Give a slot back."""
        self.in_flight -= 1

    @contextmanager
    def released(self) -> Iterator[None]:
        """Hold no slot for a while (a node parked in a long poll costs nothing)."""
        self.leave()
        try:
            yield
        finally:
            self.in_flight += 1

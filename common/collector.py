"""Pausing Python's cyclic garbage collector while a bulk of long-lived objects is made."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside: a recovery makes a million queued jobs at once, and
    each full collection meanwhile walks every one made so far (a third of the event
    loop's time for a million; docs/design.md, "A queued job in memory"). Reference
    counting still frees what dies; the collector resumes after, unless it was off."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()

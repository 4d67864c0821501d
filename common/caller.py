"""On whose behalf a call's work is done: the fingerprint of the token the call in progress
names (set by the gRPC edge), so that what its work costs further down, such as store reads
of job ids that name no job, is counted against that token alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# None for calls that name no token (nodes) and for the scheduler's own work.
CALLER: ContextVar[str | None] = ContextVar("caller", default=None)
# Where the call in progress came from, as one caller cannot vary it at will (the edge's
# address_of): what spends a budget shared by callers without a known token is charged to
# it, so that one address cannot spend another's (scheduler/auth.py).
CALLER_ADDRESS: ContextVar[str] = ContextVar("caller_address", default="")


@contextmanager
def on_own_behalf() -> Iterator[None]:
    """Work the scheduler does for itself inside a caller's call (reading back a record
    whose write failed): charged to no token."""
    reset = CALLER.set(None)
    try:
        yield
    finally:
        CALLER.reset(reset)

"""On whose behalf a call's work is done: the fingerprint of the token the call in progress
names (set by the gRPC edge), so that what its work costs further down, such as store reads
of job ids that name no job, is counted against that token alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from common.identity import Principal

# None for calls that name no token (nodes) and for the scheduler's own work.
CALLER: ContextVar[str | None] = ContextVar("caller", default=None)
# Where the call in progress came from, as one caller cannot vary it at will (the edge's
# address_of): what spends a budget shared by callers without a known token is charged to
# it, so that one address cannot spend another's (scheduler/access/auth.py).
CALLER_ADDRESS: ContextVar[str] = ContextVar("caller_address", default="")
# Who a job read in progress is for (the JobManager sets it while it looks a job up for a
# user): a job this viewer may not see is answered, and paid for, as one that does not
# exist (scheduler/access/absent_jobs.py). None: the read is the scheduler's own or a node's.
VIEWER: ContextVar[Principal | None] = ContextVar("viewer", default=None)


@contextmanager
def on_own_behalf() -> Iterator[None]:
    """Work the scheduler does for itself inside a caller's call (reading back a record
    whose write failed): charged to no token."""
    reset = CALLER.set(None)
    try:
        yield
    finally:
        CALLER.reset(reset)


@contextmanager
def looking_as(viewer: Principal) -> Iterator[None]:
    """Job reads made meanwhile are ``viewer``'s: a job it may not see reads as none."""
    reset = VIEWER.set(viewer)
    try:
        yield
    finally:
        VIEWER.reset(reset)

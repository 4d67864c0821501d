"""The fence on a leader's job writes (docs/replicas.md, "Fence").

Among replicas, the leader's writes to jobs are conditional on a fence item still naming
it at its epoch, checked by the store in the same transaction as the write. A leader
deposed while it slept (a pause, a partition) therefore changes no job when it wakes:
the new leader raised every fence item to its own epoch before it read a job, so the
old one's write is refused with Deposed and nothing happens.

Two writes of every job's life go out alone instead, as a plain conditional write: the
hand-over (QUEUED to RUNNING) and the node's report (RUNNING to its end). They carry the
term's epoch in the job item and land only on an item no later term has written; a
deposed leader checks its lease before it sends one, and the new leader's sweep finds
what one sent just before its lease ended (job_manager/phases/liveness.py; docs/replicas.md,
"Fence", for why these two and what each costs).

There are ``FENCE_ITEMS`` fence items, and each job is fenced by one of them, chosen by
its id. DynamoDB cancels transactions that name one item side by side, so the writes
fenced by one item go one transaction at a time; spread over several items, as many
transactions are in flight at once. None of them is the lease item, whose renewals
therefore never meet a job transaction.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from job_manager.stores.errors import StoreError

FENCE_ITEMS = 8
FENCE_ITEM_PREFIX = "scheduler-fence-"  # never a job id (a UUID), never a claim


def fence_item_keys(items: int = FENCE_ITEMS) -> list[str]:
    return [f"{FENCE_ITEM_PREFIX}{index}" for index in range(items)]


@dataclass(frozen=True)
class Fence:
    """A write lands only while its fence item names ``holder`` at ``epoch``."""

    holder: str
    epoch: int
    items: int = FENCE_ITEMS
    # Whether this replica's own clock says its lease still holds at ``epoch``: asked
    # before a write that goes out without the fence item (none such in a test's fence).
    holds: Callable[[], bool] = field(default=lambda: True, compare=False, repr=False)

    def item_of(self, job_id: str) -> str:
        """The fence item of a job: the same for every write to it, so they keep order."""
        return f"{FENCE_ITEM_PREFIX}{zlib.crc32(job_id.encode()) % self.items}"


class Deposed(StoreError):
    """The write was refused because this process no longer holds the lease: nothing changed."""

    def __init__(self, fence: Fence) -> None:
        super().__init__(f"this replica no longer leads at epoch {fence.epoch}")
        self.fence = fence

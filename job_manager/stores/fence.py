"""The fence on a leader's job writes (docs/replicas.md, "Fence").

Among replicas, the leader's writes to jobs are conditional on a fence item still naming
it at its epoch, checked by the store in the same transaction as the write. A leader
deposed while it slept (a pause, a partition) therefore changes no job when it wakes:
the new leader raised every fence item to its own epoch before it read a job, so the
old one's write is refused with Deposed and nothing happens.

There are ``FENCE_ITEMS`` fence items, and each job is fenced by one of them, chosen by
its id. DynamoDB cancels transactions that name one item side by side, so the writes
fenced by one item go one transaction at a time; spread over several items, as many
transactions are in flight at once. None of them is the lease item, whose renewals
therefore never meet a job transaction.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

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

    def item_of(self, job_id: str) -> str:
        """The fence item of a job: the same for every write to it, so they keep order."""
        return f"{FENCE_ITEM_PREFIX}{zlib.crc32(job_id.encode()) % self.items}"


class Deposed(StoreError):
    """The write was refused because this process no longer holds the lease: nothing changed."""

    def __init__(self, fence: Fence) -> None:
        super().__init__(f"this replica no longer leads at epoch {fence.epoch}")
        self.fence = fence

"""The fence on a leader's job writes (docs/replicas.md).

Among replicas, the leader's writes to jobs are conditional on the lease still naming
it at its epoch, checked by the store in the same transaction as the write. A leader
deposed while it slept (a pause, a partition) therefore changes no job when it wakes:
its write is refused with Deposed and nothing happens.
"""

from __future__ import annotations

from dataclasses import dataclass

from job_manager.stores.errors import StoreError


@dataclass(frozen=True)
class Fence:
    """A write lands only while the lease record ``item_key`` names ``holder`` at ``epoch``."""

    item_key: str
    holder: str
    epoch: int


class Deposed(StoreError):
    """The write was refused because this process no longer holds the lease: nothing changed."""

    def __init__(self, fence: Fence) -> None:
        super().__init__(f"this replica no longer leads at epoch {fence.epoch}")
        self.fence = fence

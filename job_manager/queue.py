"""A backend's queue of jobs waiting for a hardware node."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from job_manager.model import JobRecord


@dataclass(eq=False)
class QueuedJob:
    """A job waiting in a queue, with its program held in memory for a fast hand-over."""

    record: JobRecord
    program: bytes
    sequence: int = -1  # arrival order among equal queued_at; kept when put back

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def size_bytes(self) -> int:
        return len(self.program)


@dataclass(order=True)
class _Slot:
    queued_at_s: float
    sequence: int
    job: QueuedJob | None = field(compare=False)  # None once removed


class JobQueue:
    """Jobs in order of arrival (``queued_at``); a job put back returns to its place.

    Removal is lazy (the slot is emptied and skipped later), so push, pop and
    remove are O(log n).
    """

    def __init__(self) -> None:
        self._heap: list[_Slot] = []
        self._slots: dict[str, _Slot] = {}
        self._sequence = itertools.count()
        self.bytes_held = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._slots

    def push(self, job: QueuedJob) -> None:
        """Add a job in its place by ``queued_at``."""
        if job.sequence < 0:
            job.sequence = next(self._sequence)
        slot = _Slot(job.record.queued_at.timestamp(), job.sequence, job)
        heapq.heappush(self._heap, slot)
        self._slots[job.job_id] = slot
        self.bytes_held += job.size_bytes

    def pop(self) -> QueuedJob | None:
        """Take the job that goes next, or None when the queue is empty."""
        while self._heap:
            slot = heapq.heappop(self._heap)
            if slot.job is not None:
                return self._take(slot)
        return None

    def remove(self, job_id: str) -> QueuedJob | None:
        """Take a given job out, or None when it is not in this queue."""
        slot = self._slots.get(job_id)
        return self._take(slot) if slot else None

    def restore(self, job: QueuedJob) -> None:
        """Put back a job that was taken but could not be started: same place as before."""
        self.push(job)

    def _take(self, slot: _Slot) -> QueuedJob:
        job = slot.job
        assert job is not None
        slot.job = None
        del self._slots[job.job_id]
        self.bytes_held -= job.size_bytes
        return job

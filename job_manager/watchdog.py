"""Deadlines of RUNNING jobs: one heap for all of them, not one task per job.

Deadlines are kept on the monotonic clock: a deadline given as a wall-clock time (a
job's ``dequeued_at`` plus its timeout and grace) is turned into monotonic time when it
is watched, so a step of the wall clock (an NTP correction, a VM resumed) never times
out running jobs at once, nor lets them run on. Wall-clock times are read only there,
when a job is watched (after a hand-over, a restart or a takeover). A heartbeat's
deadline (docs/nodes.md) is given as a duration from now, on the monotonic clock alone.

The watchdog only keeps time; what a passed deadline means is decided by the liveness
phase (job_manager/phases/liveness.py), which asks for the due ones and sleeps on
:meth:`Watchdog.until_next`. The ledger (job_manager/ledger.py) is its only keeper.
"""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass
from datetime import datetime

from common.clock import Clock

MAX_SLEEP_S = 5.0  # re-check at least this often
RETRY_S = 5.0  # when timing a job out failed (store down), try again after this


@dataclass(frozen=True)
class Due:
    """A deadline that has passed: the job, what was watched with it (the hand-over it
    belongs to, or a heartbeat), and the monotonic time it was found due."""

    job_id: str
    watched: object
    found_s: float


class Watchdog:
    """A heap of deadlines; one sleeper waits for the earliest.

    A job that finished in time is simply skipped when its deadline comes (the liveness
    phase checks); ``watched`` is what was given with the deadline, so a deadline of an
    earlier hand-over can be told apart from the current one.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._deadlines: list[tuple[float, int, str, object]] = []  # monotonic s, tie-break
        self._entries = 0
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._deadlines)

    def watch(self, job_id: str, deadline: datetime | None, watched: object = None) -> None:
        """Due at ``deadline`` (wall clock, read now) unless the job is over by then; a
        deadline of None is none: nothing to watch."""
        if deadline is None:
            return
        left_s = (deadline - self._clock.now()).total_seconds()
        self._push(self._clock.monotonic() + left_s, job_id, watched)

    def watch_for(self, job_id: str, seconds: float, watched: object = None) -> None:
        """Due ``seconds`` from now unless the job is over by then."""
        self._push(self._clock.monotonic() + seconds, job_id, watched)

    def retry(self, due: Due) -> None:
        """A due deadline whose verdict failed (the store was down): due again RETRY_S
        after it was found due."""
        self._push(due.found_s + RETRY_S, due.job_id, due.watched)

    def due(self) -> list[Due]:
        """Every deadline that has passed, taken off the heap, the earliest first."""
        now_s = self._clock.monotonic()
        passed = []
        while self._deadlines and self._deadlines[0][0] <= now_s:
            _, _, job_id, watched = heapq.heappop(self._deadlines)
            passed.append(Due(job_id, watched, now_s))
        return passed

    async def until_next(self) -> None:
        """Sleep until the earliest deadline, an earlier one being watched, or MAX_SLEEP_S."""
        sleep_s = MAX_SLEEP_S
        if self._deadlines:
            left_s = self._deadlines[0][0] - self._clock.monotonic()
            sleep_s = min(max(left_s, 0.0), MAX_SLEEP_S)
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), sleep_s)
        except TimeoutError:
            pass

    def _push(self, due_s: float, job_id: str, watched: object) -> None:
        self._entries += 1
        heapq.heappush(self._deadlines, (due_s, self._entries, job_id, watched))
        if self._deadlines[0][2] == job_id:
            self._changed.set()

"""Deadlines of RUNNING jobs: one timer for all of them, not one task per job.

Deadlines are kept on the monotonic clock: a deadline given as a wall-clock time (a
job's ``dequeued_at`` plus its timeout and grace) is turned into monotonic time when it
is watched, so a step of the wall clock (an NTP correction, a VM resumed) never times
out running jobs at once, nor lets them run on. Wall-clock times are read only there,
when a job is watched (after a hand-over, a restart or a takeover). A heartbeat's
deadline (docs/nodes.md) is given as a duration from now, on the monotonic clock alone.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from common.clock import Clock

log = logging.getLogger(__name__)

MAX_SLEEP_S = 5.0  # re-check at least this often
RETRY_S = 5.0  # when timing a job out failed (store down), try again after this


class Watchdog:
    """Calls ``expire(job_id, watched)`` for each job whose deadline has passed.

    Deadlines sit in a heap; one task sleeps until the earliest. A job that
    finished in time is simply skipped when its deadline comes (``expire`` checks);
    ``watched`` is what was given with the deadline (the hand-over it belongs to), so a
    deadline of an earlier hand-over can be told apart from the current one.
    """

    def __init__(self, clock: Clock, expire: Callable[[str, object], Awaitable[None]],
                 tick: Callable[[], None] = lambda: None) -> None:
        self._clock = clock
        self._expire = expire
        self._tick = tick  # also run on every round (at least every MAX_SLEEP_S)
        self._deadlines: list[tuple[float, int, str, object]] = []  # monotonic s, tie-break
        self._entries = 0
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._deadlines)

    def watch(self, job_id: str, deadline: datetime | None, watched: object = None) -> None:
        """Expire ``job_id`` at ``deadline`` (wall clock, read now) unless it is over by then;
        a deadline of None is none: nothing to watch."""
        if deadline is None:
            return
        left_s = (deadline - self._clock.now()).total_seconds()
        self._push(self._clock.monotonic() + left_s, job_id, watched)

    def watch_for(self, job_id: str, seconds: float, watched: object = None) -> None:
        """Expire ``job_id`` ``seconds`` from now unless it is over by then."""
        self._push(self._clock.monotonic() + seconds, job_id, watched)

    def _push(self, due_s: float, job_id: str, watched: object) -> None:
        self._entries += 1
        heapq.heappush(self._deadlines, (due_s, self._entries, job_id, watched))
        if self._deadlines[0][2] == job_id:
            self._changed.set()

    async def check(self) -> int:
        """Expire every job whose deadline has passed; returns how many were due."""
        now_s = self._clock.monotonic()
        due = []
        while self._deadlines and self._deadlines[0][0] <= now_s:
            _, _, job_id, watched = heapq.heappop(self._deadlines)
            due.append((job_id, watched))
        for job_id, watched in due:
            try:
                await self._expire(job_id, watched)
            except Exception:
                log.exception("job %s could not be timed out; retrying in %.0f s", job_id,
                              RETRY_S)
                self._push(now_s + RETRY_S, job_id, watched)
        return len(due)

    async def run(self) -> None:
        """Watch for ever (the scheduler's supervisor runs this, and restarts it)."""
        while True:
            await self.check()
            self._tick()
            sleep_s = MAX_SLEEP_S
            if self._deadlines:
                left_s = self._deadlines[0][0] - self._clock.monotonic()
                sleep_s = min(max(left_s, 0.0), MAX_SLEEP_S)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), sleep_s)
            except TimeoutError:
                pass

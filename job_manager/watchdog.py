"""Deadlines of RUNNING jobs: one timer for all of them, not one task per job."""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from common.clock import Clock

log = logging.getLogger(__name__)

MAX_SLEEP_S = 5.0  # re-check at least this often, so a moved clock is noticed
RETRY_S = 5.0  # when timing a job out failed (store down), try again after this


class Watchdog:
    """Calls ``expire(job_id)`` for each job whose deadline has passed.

    Deadlines sit in a heap; one task sleeps until the earliest. A job that
    finished in time is simply skipped when its deadline comes (``expire`` checks).
    """

    def __init__(self, clock: Clock, expire: Callable[[str], Awaitable[None]]) -> None:
        self._clock = clock
        self._expire = expire
        self._deadlines: list[tuple[datetime, str]] = []
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._deadlines)

    def watch(self, job_id: str, deadline: datetime) -> None:
        """Expire ``job_id`` at ``deadline`` unless it is over by then."""
        heapq.heappush(self._deadlines, (deadline, job_id))
        if self._deadlines[0][1] == job_id:
            self._changed.set()

    async def check(self) -> int:
        """Expire every job whose deadline has passed; returns how many were due."""
        now = self._clock.now()
        due = []
        while self._deadlines and self._deadlines[0][0] <= now:
            due.append(heapq.heappop(self._deadlines)[1])
        for job_id in due:
            try:
                await self._expire(job_id)
            except Exception:
                log.exception("job %s could not be timed out; retrying in %.0f s", job_id,
                              RETRY_S)
                heapq.heappush(self._deadlines, (now + timedelta(seconds=RETRY_S), job_id))
        return len(due)

    async def run(self) -> None:
        """Watch for ever (the scheduler's supervisor runs this, and restarts it)."""
        while True:
            await self.check()
            sleep_s = MAX_SLEEP_S
            if self._deadlines:
                left_s = (self._deadlines[0][0] - self._clock.now()).total_seconds()
                sleep_s = min(max(left_s, 0.0), MAX_SLEEP_S)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), sleep_s)
            except TimeoutError:
                pass

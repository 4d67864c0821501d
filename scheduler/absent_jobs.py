"""Job ids that name no job: remembered for a while, and what a token's misses may cost.

A job id is a UUID4 the scheduler makes and answers only once the job's record is stored;
so an id the store has no record of (reads are consistent) will not gain one by anyone's
doing, on this replica or another, and is remembered as absent for a while. A flood of
*distinct* unknown ids by one valid token is bounded by that token's budget of store
reads that found nothing; past it, its reads are refused before they reach the store
(docs/errors.md, "Limits per token").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from job_manager.model import JobRecord
from message_manager import SchedulerError
from scheduler.admission import CALLER, Buckets

T = TypeVar("T")
ABSENT_TTL_S = 300.0  # how long an id the store lacked is answered absent without a read
ABSENT_IDS = 10_000  # ids remembered at most; the oldest forgotten first


class AbsentJobs:
    """Stands in for the manager's JobStore: ``get`` as above, all else passed through."""

    def __init__(self, store: Any, monotonic: Callable[[], float], miss_rate_per_s: float,
                 max_ids: int = ABSENT_IDS) -> None:
        self._store = store
        self._monotonic = monotonic
        self._miss_rate_per_s = miss_rate_per_s
        self._max_ids = max_ids
        self._absent: OrderedDict[str, float] = OrderedDict()  # job id → remembered until
        self._misses = Buckets(monotonic)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get(self, job_id: str) -> JobRecord | None:
        """The record, None when there is none; a known-absent id costs no read."""
        until = self._absent.get(job_id)
        if until is not None and until > self._monotonic():
            return None
        caller = CALLER.get()
        # Each read is paid for before it starts (calls at once cannot all pass a check
        # made before any of them missed) and given back when it found a job.
        if caller is not None and not self._misses.take(caller, self._miss_rate_per_s):
            raise SchedulerError("job_lookups_exhausted")
        try:
            record: JobRecord | None = await self._store.get(job_id)
        except BaseException:
            if caller is not None:
                self._misses.give_back(caller, self._miss_rate_per_s)
            raise
        if record is None:
            self._remember_absent(job_id)
        elif caller is not None:
            self._misses.give_back(caller, self._miss_rate_per_s)
        return record

    async def create(self, record: JobRecord, *args: Any, **kwargs: Any) -> None:
        """Store a new record (an id remembered absent is forgotten first)."""
        self._absent.pop(record.job_id, None)
        await self._store.create(record, *args, **kwargs)

    def _remember_absent(self, job_id: str) -> None:
        self._absent.pop(job_id, None)
        self._absent[job_id] = self._monotonic() + ABSENT_TTL_S
        while len(self._absent) > self._max_ids:
            self._absent.popitem(last=False)


def remembering_absent(store: T, monotonic: Callable[[], float], miss_rate_per_s: float) -> T:
    """``store`` behind an AbsentJobs."""
    return AbsentJobs(store, monotonic, miss_rate_per_s)  # type: ignore[return-value]

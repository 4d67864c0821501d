"""Job ids that name no job a caller may see: remembered for a while, and what a token's
misses may cost.

A job id is a UUID4 the scheduler makes and answers only once the job's record is stored;
so an id the store has no record of (reads are consistent) will not gain one by anyone's
doing, on this replica or another, and is remembered as absent for a while. A job's owner
never changes either, so a job read for a user who may not see it is remembered with its
owner the same way: to anyone but its owner (or an admin) it is answered, paid for and
remembered exactly as an id that names nothing, so that neither the answer, nor the store
reads, nor the budget it spends can tell the two apart (issue 27, item 9; docs/errors.md,
"Limits per token"). A flood of *distinct* such ids by one valid token is bounded by that
token's budget of store reads that found nothing it may see; past it, its reads are
refused before they reach the store.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from common.caller import VIEWER
from common.identity import Principal
from job_manager.model import JobRecord
from message_manager import SchedulerError
from scheduler.access.admission import CALLER, Buckets

T = TypeVar("T")
ABSENT_TTL_S = 300.0  # how long an id read as no one's to see is answered without a read
ABSENT_IDS = 10_000  # ids remembered at most; the oldest forgotten first


@dataclass(frozen=True)
class _Unseen:
    """A job id read for someone who could not see it: until when that is remembered,
    and whose job it is (None: no job's)."""

    until_s: float
    owner: str | None

    @property
    def owner_fingerprint(self) -> str:
        return self.owner or ""

    def hides_from(self, viewer: Principal | None) -> bool:
        """Whether this id reads as no job for ``viewer`` (None: the scheduler, a node)."""
        if self.owner is None:
            return True
        return viewer is not None and not viewer.may_see(self)


class AbsentJobs:
    """Stands in for the manager's JobStore: ``get`` as above, all else passed through."""

    def __init__(self, store: Any, monotonic: Callable[[], float], miss_rate_per_s: float,
                 max_ids: int = ABSENT_IDS) -> None:
        self._store = store
        self._monotonic = monotonic
        self._miss_rate_per_s = miss_rate_per_s
        self._max_ids = max_ids
        self._unseen: OrderedDict[str, _Unseen] = OrderedDict()
        self._misses = Buckets(monotonic)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get(self, job_id: str) -> JobRecord | None:
        """The record, None when there is none, or (for a VIEWER) none it may see; an id
        remembered so costs no read."""
        viewer = VIEWER.get()
        unseen = self._unseen.get(job_id)
        if unseen is not None and unseen.until_s > self._monotonic() and unseen.hides_from(viewer):
            return None
        caller = CALLER.get()
        # Each read is paid for before it starts (calls at once cannot all pass a check
        # made before any of them missed) and given back when it found what was asked.
        if caller is not None and not self._misses.take(caller, self._miss_rate_per_s):
            raise SchedulerError("job_lookups_exhausted")
        try:
            record: JobRecord | None = await self._store.get(job_id)
        except BaseException:
            self._give_back(caller)
            raise
        if record is None or (viewer is not None and not viewer.may_see(record)):
            self._remember_unseen(job_id, record)
            return None
        self._give_back(caller)
        return record

    async def create(self, record: JobRecord, *args: Any, **kwargs: Any) -> None:
        """Store a new record (an id remembered absent is forgotten first)."""
        self._unseen.pop(record.job_id, None)
        await self._store.create(record, *args, **kwargs)

    def _give_back(self, caller: str | None) -> None:
        if caller is not None:
            self._misses.give_back(caller, self._miss_rate_per_s)

    def _remember_unseen(self, job_id: str, record: JobRecord | None) -> None:
        self._unseen.pop(job_id, None)
        owner = record.owner_fingerprint if record is not None else None
        self._unseen[job_id] = _Unseen(self._monotonic() + ABSENT_TTL_S, owner)
        while len(self._unseen) > self._max_ids:
            self._unseen.popitem(last=False)


def remembering_absent(store: T, monotonic: Callable[[], float], miss_rate_per_s: float) -> T:
    """``store`` behind an AbsentJobs."""
    return AbsentJobs(store, monotonic, miss_rate_per_s)  # type: ignore[return-value]

"""Finding jobs: an owner's records newest first, filtered and paged (the extension's
ListJobs), and the totals of a period (its GetUsage). Read from the JobStore, so any
replica answers alike.

Pages are keyed by (submitted_at, job_id), which never change: a job that changes
status between two pages keeps its place, so it is neither lost nor repeated (it shows
with the status it had when its page was read). Filters other than owner and period are
applied here; a page reads at most READS_PER_JOB records per job it may hold (and walks
at most MARKS_PER_PAGE of a store's parts), so a narrow filter over a long period gives
short pages, each with a token for the rest, instead of one page that reads the whole
period (docs/protocol.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime

from job_manager.model import JobRecord, JobStatus, is_job_id
from job_manager.stores import IndexMissing, JobStore, Reached, StoreError
from message_manager import SchedulerError

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
ADD_OWNER_INDEX = "scheduler.py migrate add-owner-index"
READS_PER_JOB = 20  # records a page may read per job it may hold (at least MIN_READS)
MIN_READS = 200
MARKS_PER_PAGE = 24  # a store's parts a page may walk: DynamoDB's months, two years


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last job it held, by its never-changing sort key; or, for
    a page cut short, an instant with no job ("") before which the next page starts."""

    submitted_at: datetime
    job_id: str

    def token(self) -> str:
        """The opaque page token a client sends back."""
        text = json.dumps({"t": self.submitted_at.isoformat(), "j": self.job_id})
        return base64.urlsafe_b64encode(text.encode()).decode()

    @classmethod
    def from_token(cls, token: str) -> Cursor:
        """The cursor a page token names; page_token_invalid when it names none."""
        try:
            fields = json.loads(base64.urlsafe_b64decode(token.encode()))
            cursor = cls(datetime.fromisoformat(fields["t"]), str(fields["j"]))
        except (binascii.Error, ValueError, TypeError, KeyError, UnicodeError):
            raise SchedulerError("page_token_invalid") from None
        if cursor.submitted_at.tzinfo is None or not (
                cursor.job_id == "" or is_job_id(cursor.job_id)):
            raise SchedulerError("page_token_invalid")
        return cursor

    @property
    def key(self) -> tuple[datetime, str]:
        return self.submitted_at, self.job_id


@dataclass(frozen=True)
class ListQuery:
    """Which jobs a listing shows, checked at the edge."""

    owner_fingerprint: str | None  # None: every owner's (an admin)
    since: datetime
    until: datetime
    statuses: frozenset[JobStatus] = frozenset()  # empty: every status
    backend: str = ""
    tag: tuple[str, str] | None = None
    owner_name: str = ""  # an admin's filter by name; "" none
    page_size: int = DEFAULT_PAGE_SIZE
    after: Cursor | None = None

    @property
    def filtered(self) -> bool:
        """Whether some jobs the store gives may be left out of the page."""
        return bool(self.statuses or self.backend or self.tag or self.owner_name)

    def matches(self, record: JobRecord) -> bool:
        """Whether the record passes every filter but owner and period (the store's)."""
        return ((not self.statuses or record.status in self.statuses)
                and (not self.backend or record.backend == self.backend)
                and (self.tag is None or self.tag in record.tags)
                and (not self.owner_name or record.owner_name == self.owner_name))


def checked_page_size(requested: int) -> int:
    """The page size a request asks for (0: the default), or a refusal."""
    if requested < 0 or requested > MAX_PAGE_SIZE:
        raise SchedulerError("page_size_out_of_range", default=DEFAULT_PAGE_SIZE,
                             maximum=MAX_PAGE_SIZE, value=requested)
    return requested or DEFAULT_PAGE_SIZE


def _sort_key(record: JobRecord) -> tuple[datetime, str]:
    return record.submitted_at, record.job_id


async def list_page(store: JobStore, query: ListQuery) -> tuple[list[JobRecord], Cursor | None]:
    """One page of the query's jobs, newest first, and the cursor of the next (None: last)."""
    until = query.until
    if query.after is not None:
        until = min(until, query.after.submitted_at)
    if until < query.since:
        return [], None  # a token from before the period: nothing is left of it
    reading = _PageReading(query)
    # A page and the first job past it, and one more to see that job's instant end; a
    # filtered page reads in larger steps, up to what it may read.
    batch = min(reading.reads, 1000) if query.filtered else query.page_size + 2
    async for found in _listed(store, query.owner_fingerprint, query.since, until, batch):
        if not reading.read(found):
            break
    return reading.page()


@dataclass
class _PageReading:
    """One page's reading: what matched, and what it cost, so that it stops in time."""

    query: ListQuery
    matched: list[JobRecord] = field(default_factory=list)
    records: int = 0
    marks: int = 0
    instant: datetime | None = None  # of the last record read
    resume: Cursor | None = None  # where the next page starts when this one is cut short

    def read(self, found: JobRecord | Reached) -> bool:
        """Take what the store gave; whether to read on."""
        if isinstance(found, Reached):
            self.marks += 1
            return not self._stops_before(found.instant, self.marks >= MARKS_PER_PAGE)
        # Records of one instant come in any order: a page ends only where one does.
        if self.instant is not None and found.submitted_at < self.instant and \
                self._stops_before(self.instant, self.records >= self.reads):
            return False
        self.instant = found.submitted_at
        self.records += 1
        if self.query.after is not None and _sort_key(found) >= self.query.after.key:
            return True
        if self.query.matches(found):
            self.matched.append(found)
        return True

    @property
    def reads(self) -> int:
        """How many records the page may read (it ends only where an instant does)."""
        return max(MIN_READS, READS_PER_JOB * self.query.page_size)

    def _stops_before(self, instant: datetime, spent: bool) -> bool:
        """At the end of everything read at or after ``instant``: whether the page is
        full, or its reads spent (then the next page starts before ``instant``)."""
        if len(self.matched) > self.query.page_size:
            return True
        if spent:
            self.resume = Cursor(instant, "")
        return spent

    def page(self) -> tuple[list[JobRecord], Cursor | None]:
        self.matched.sort(key=_sort_key, reverse=True)
        page = self.matched[:self.query.page_size]
        if len(self.matched) > self.query.page_size:
            return page, Cursor(page[-1].submitted_at, page[-1].job_id)
        return page, self.resume


async def records(store: JobStore, owner: str | None, since: datetime,
                  until: datetime) -> AsyncIterator[JobRecord]:
    """Every record of one owner (None: every owner's) submitted from ``since`` to
    ``until``, newest first; store failures become the caller's answer."""
    async for found in _listed(store, owner, since, until):
        if not isinstance(found, Reached):
            yield found


async def _listed(store: JobStore, owner: str | None, since: datetime,
                  until: datetime, batch: int = 0) -> AsyncIterator[JobRecord | Reached]:
    try:
        async for found in store.list_newest_first(owner, since, until, batch):
            yield found
    except IndexMissing as exc:
        raise SchedulerError("owner_index_missing", index=exc.index,
                             command=ADD_OWNER_INDEX) from None
    except StoreError as exc:
        log.error("jobs could not be listed: the store failed: %s", exc)
        raise SchedulerError("store_failed") from None


@dataclass
class Totals:
    """One owner's use over a period."""

    owner_name: str
    owner_fingerprint: str
    role: str
    by_final_status: Counter[JobStatus] = field(default_factory=Counter)
    shots: int = 0  # of the jobs that completed
    queue_wait_s: float = 0.0  # queued_at to dequeued_at
    execution_s: float = 0.0  # dequeued_at to finished_at
    shots_run: int = 0  # of the jobs a node received (running, ended, or queued again)
    qpu_s: float = 0.0  # the execution times the nodes reported (job_manager/budgets.py)

    def add(self, record: JobRecord, shots: int) -> None:
        """Count one job submitted in the period."""
        if record.dequeued_at is not None or record.requeues:
            self.shots_run += shots  # a requeued job's first node received it
        if record.dequeued_at is not None:
            self.qpu_s += qpu_seconds(record)
        if record.status.is_final:
            self.by_final_status[record.status] += 1
        if record.status is JobStatus.COMPLETED:
            self.shots += shots
        if record.dequeued_at is not None:
            self.queue_wait_s += max(0.0, (record.dequeued_at - record.queued_at).total_seconds())
            if record.finished_at is not None:
                self.execution_s += max(
                    0.0, (record.finished_at - record.dequeued_at).total_seconds())


def qpu_seconds(record: JobRecord) -> float:
    """The QPU time a job took, as its node reported it: from its execution's start to its
    end; 0 until both are reported (docs/reservations.md, "Budgets")."""
    stamps = record.backend_timestamps
    if stamps.execution_started_at is None or stamps.execution_finished_at is None:
        return 0.0
    return max(0.0, (stamps.execution_finished_at - stamps.execution_started_at).total_seconds())


async def usage(store: JobStore, owner_fingerprint: str | None, since: datetime,
                until: datetime, shots_of: Callable[[JobRecord], int]) -> dict[str, Totals]:
    """Each owner's totals over the jobs submitted from ``since`` to ``until``, by
    fingerprint (one owner's, or with None every owner's)."""
    totals: dict[str, Totals] = {}
    async for record in _listed(store, owner_fingerprint, since, until):
        if isinstance(record, Reached):
            continue  # totals need every record of the period: read on
        owner = totals.get(record.owner_fingerprint)
        if owner is None:
            owner = totals[record.owner_fingerprint] = Totals(
                record.owner_name, record.owner_fingerprint, record.role.value)
        owner.add(record, shots_of(record))
    return totals

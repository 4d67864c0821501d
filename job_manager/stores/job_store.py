"""The JobStore interface: records of jobs, changed only by compare-and-set."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import AsyncIterator, Protocol

from job_manager.model import JobRecord, JobStatus, QueuedRow
from job_manager.stores.fence import Fence


@dataclass(frozen=True)
class Reached:
    """A listing's mark between records: every record it has to give that was submitted
    at or after ``instant`` has been given. A store whose listing is a walk over parts
    (DynamoDB's months) gives one after each part, so that a reader may stop there and
    resume before ``instant`` even when the parts walked held nothing (listing.py)."""

    instant: datetime


@dataclass(frozen=True)
class Document:
    """One of the scheduler's own small documents, as stored: its body and its version,
    which each write raises by one (a compare-and-set, as a job's status)."""

    body: bytes
    version: int


class JobStore(Protocol):
    """Durable job records, keyed by ``job_id``.

    Every method raises :class:`~job_manager.stores.errors.StoreError` when the
    store cannot be reached or answers with an error.
    """

    async def raise_fence(self, fence: Fence) -> None:
        """Before a leader's term reads a job: from now on only writes fenced at
        ``fence``'s epoch or later land (Deposed when a later one was raised already).
        A store with a single writer (standalone) has nothing to raise."""

    async def create(self, record: JobRecord, fence: Fence | None = None) -> None:
        """Store a new record; StoreError if a record with its id exists.

        With a ``fence``, only while the lease it names still holds (else Deposed, and
        nothing is stored); a store with a single writer (standalone) has none to check.

        A record with an idempotency key is stored only if no other record of its
        owner holds that key within the store's key window (submitted less than the
        window before it); otherwise KeyTaken, and nothing is stored. The check and
        the write are one atomic step, so two racing submissions make one job.
        """
        ...

    async def get(self, job_id: str) -> JobRecord | None:
        """The record, or None when there is none."""
        ...

    async def transition(self, before: JobRecord, after: JobRecord,
                         fence: Fence | None = None) -> bool:
        """Change the stored record from ``before`` to ``after`` only if its status is still
        ``before.status`` (and, with a ``fence``, only while its lease holds: else Deposed).

        Only the attributes that differ between the two are written; attributes the store
        holds that this code does not know (a newer scheduler's) are kept. A record of the
        original's format is rewritten whole in this scheduler's. RecordTooNew, changing
        nothing, when the stored record is of a newer format (docs/records.md).

        Returns False, changing nothing, when the stored status differs or the
        record does not exist.
        """
        ...

    def list_by_status(self, status: JobStatus) -> AsyncIterator[JobRecord]:
        """Every record with ``status``, fetched page by page."""
        ...

    def list_queued(self) -> AsyncIterator[JobRecord | QueuedRow]:
        """Every QUEUED record, fetched page by page, for a recovery: a record that holds
        no more than a fresh submission gives it may come as a lean QueuedRow (the store
        decodes no more of it than that), any other as a JobRecord."""
        ...

    def list_newest_first(self, owner_fingerprint: str | None, since: datetime,
                          until: datetime, batch: int = 0
                          ) -> AsyncIterator[JobRecord | Reached]:
        """The records of one owner (None: of every owner) submitted from ``since`` to
        ``until`` (both included), newest first, fetched ``batch`` at a time (0: the
        store's own page size), so that a reader who stops early has read about what it
        used; with Reached marks between them where the store walks over parts.

        Newest first means by ``submitted_at`` descending; records submitted at the same
        instant may come in any order (the caller orders them by job id).
        IndexMissing when the store lacks the index this needs (DynamoDB's owner-index,
        or for every owner its submitted-index).
        """
        ...

    async def find_by_idempotency_key(self, owner_fingerprint: str, key: str) -> JobRecord | None:
        """The newest job its owner submitted with this idempotency key, if any (it may
        be older than the window: the caller decides what an old one means)."""
        ...

    async def read_document(self, name: str) -> Document | None:
        """The scheduler's own small document ``name`` (its bookings, its sessions), or None
        when none was written. Read strongly: a new leader reads the last one written."""
        ...

    async def write_document(self, name: str, body: bytes, version: int,
                             fence: Fence | None = None) -> bool:
        """Store ``body`` as document ``name`` at ``version`` + 1, only if the stored one is
        still at ``version`` (0: none stored yet); whether it was. Fenced like a job's write."""
        ...

    async def close(self) -> None:
        """Release connections and threads; idempotent."""
        ...

"""One small document of the scheduler's own in the job store, held in memory and changed
whole: the bookings (job_manager/bookings.py), the sessions (job_manager/sessions.py).

Each change is a compare-and-set on the document's version, fenced like a job's write
(job_manager/stores/job_store.py); a change raced by another write (a retry whose answer
was lost, another leader's) reads the document again and is applied to what it holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from job_manager.stores import Fence, JobStore
from message_manager import SchedulerError

T = TypeVar("T")
WRITE_ATTEMPTS = 3  # a change raced by other writes is tried this often in all
# The most a document may take, in both stores alike: DynamoDB holds an item of at most
# 400 KB, key and attribute names included; this leaves room for them.
MAX_DOCUMENT_BYTES = 350_000


class StoredDocument(Generic[T]):
    """The items of one document, as last read or written here."""

    def __init__(self, store: JobStore, name: str, encode: Callable[[tuple[T, ...]], bytes],
                 decode: Callable[[bytes], tuple[T, ...]], fence: Fence | None,
                 full_advice: str) -> None:
        self._store = store
        self._name = name
        self._full_advice = full_advice  # what a user can do when the document is full
        self._encode = encode
        self._decode = decode
        self._fence = fence
        self.items: tuple[T, ...] = ()
        self._version = 0
        # This process's writes go one at a time, each on the last: run at once, they would
        # all write on one version and all but one lose (only another leader's may race).
        self._writing = asyncio.Lock()

    async def load(self) -> None:
        """Read the document from the store."""
        document = await self._store.read_document(self._name)
        if document is None:
            self.items, self._version = (), 0
        else:
            self.items, self._version = self._decode(document.body), document.version

    async def change(self, change: Callable[[tuple[T, ...]], tuple[T, ...]],
                     keep: Callable[[T], bool]) -> None:
        """Write ``change`` of the items ``keep`` keeps; a SchedulerError ``change`` raises
        (a refusal) changes nothing, nor does a change that would take the document past
        MAX_DOCUMENT_BYTES (``document_full``: a change that shrinks it always fits)."""
        async with self._writing:
            await self._write(change, keep)

    async def _write(self, change: Callable[[tuple[T, ...]], tuple[T, ...]],
                     keep: Callable[[T], bool]) -> None:
        for _ in range(WRITE_ATTEMPTS):
            changed = change(tuple(item for item in self.items if keep(item)))
            body = self._encode(changed)
            if len(body) > MAX_DOCUMENT_BYTES:
                raise SchedulerError("document_full", what=self._name, size=len(body),
                                     limit=MAX_DOCUMENT_BYTES, advice=self._full_advice)
            if await self._store.write_document(self._name, body, self._version,
                                                self._fence):
                self.items, self._version = changed, self._version + 1
                return
            await self.load()  # another write came first
        raise SchedulerError("store_failed")

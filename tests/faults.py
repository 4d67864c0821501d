"""Store wrappers that fail, stall or go down on demand, for fault-injection tests.

Each wrapper passes every protocol call through to a real store. A test can arrange
that a given call raises :class:`StoreError` (before the real call, or after it
succeeded: "written, but the answer was lost"), switch the store ``down``, or hold a
method's calls at a gate to race another operation against them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from job_manager.model import JobRecord, JobStatus, QueuedRow
from job_manager.stores import (
    Document,
    Fence,
    JobStore,
    ObjectTags,
    PayloadStore,
    Reached,
    SignedUrl,
)
from job_manager.stores.errors import StoreError
from job_manager.stores.local_payload_store import SqliteInputsPayloadStore

T = TypeVar("T")


@dataclass(frozen=True)
class _Failure:
    """Calls ``first``..``last`` (numbered since the wrapper was made) fail."""

    first: int
    last: int
    after: bool


class _Faults:
    """Call counters, arranged failures, gates and the ``down`` switch of one store."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: Counter[str] = Counter()
        self.down = False
        self._failures: dict[str, list[_Failure]] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self._held: dict[str, asyncio.Event] = {}

    def fail_on(self, method: str, nth: int = 1, times: int = 1, *, after: bool = False) -> None:
        """Make the ``nth`` call of ``method`` from now on, and the ``times - 1`` after it, fail.

        With ``after=True`` the real call is made first and its answer is replaced
        by the error (the write happened; the caller cannot know).
        """
        if nth < 1 or times < 1:
            raise ValueError("nth and times count from 1")
        first = self.calls[method] + nth
        self._failures.setdefault(method, []).append(
            _Failure(first=first, last=first + times - 1, after=after)
        )

    def gate(self, method: str) -> asyncio.Event:
        """Hold every call of ``method`` until the returned event is set."""
        event = asyncio.Event()
        self._gates[method] = event
        self._held[method] = asyncio.Event()
        return event

    async def held(self, method: str, timeout_s: float = 2.0) -> None:
        """Return once a call of ``method`` is waiting at its gate."""
        await asyncio.wait_for(self._held[method].wait(), timeout_s)

    def _error(self, method: str, when: str) -> StoreError:
        return StoreError(f"{self.name}.{method}: injected failure ({when})")

    async def _call(self, method: str, call: Callable[[], Awaitable[T]]) -> T:
        """Count, hold, maybe fail, and otherwise pass ``call`` through."""
        failure = await self._before(method)
        answer = await call()
        self._after(method, failure)
        return answer

    async def _before(self, method: str) -> _Failure | None:
        """Count the call, hold it at its gate, and raise if it is to fail before the store."""
        failure = self._arrive(method)
        await self._pass_gate(method)
        if self.down:
            raise self._error(method, "store down")
        if failure is not None and not failure.after:
            raise self._error(method, "before the call")
        return failure

    def _after(self, method: str, failure: _Failure | None) -> None:
        if failure is not None and failure.after:
            raise self._error(method, "after the call succeeded")

    def _arrive(self, method: str) -> _Failure | None:
        self.calls[method] += 1
        n = self.calls[method]
        for failure in self._failures.get(method, []):
            if failure.first <= n <= failure.last:
                return failure
        return None

    async def _pass_gate(self, method: str) -> None:
        gate = self._gates.get(method)
        if gate is not None and not gate.is_set():
            self._held[method].set()
            await gate.wait()


class FlakyJobStore(_Faults):
    """A JobStore that passes through to ``inner`` unless told to fail."""

    def __init__(self, inner: JobStore) -> None:
        super().__init__("jobs")
        self.inner = inner

    async def raise_fence(self, fence: Fence) -> None:
        await self.inner.raise_fence(fence)

    async def create(self, record: JobRecord, fence: Fence | None = None) -> None:
        await self._call("create", lambda: self.inner.create(record, fence))

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._call("get", lambda: self.inner.get(job_id))

    async def transition(self, before: JobRecord, after: JobRecord,
                         fence: Fence | None = None) -> bool:
        return await self._call("transition",
                                lambda: self.inner.transition(before, after, fence))

    async def list_by_status(self, status: JobStatus) -> AsyncIterator[JobRecord]:
        """Faults apply to a listing as a whole: before its first page, after its last."""
        failure = await self._before("list_by_status")
        async for record in self.inner.list_by_status(status):
            yield record
        self._after("list_by_status", failure)

    async def list_queued(self) -> AsyncIterator[JobRecord | QueuedRow]:
        """Faults apply to a listing as a whole, as to list_by_status."""
        failure = await self._before("list_queued")
        async for found in self.inner.list_queued():
            yield found
        self._after("list_queued", failure)

    async def list_newest_first(self, owner_fingerprint: str | None, since: datetime,
                                until: datetime, batch: int = 0
                                ) -> AsyncIterator[JobRecord | Reached]:
        """Faults apply to a listing as a whole, as to list_by_status."""
        failure = await self._before("list_newest_first")
        async for record in self.inner.list_newest_first(owner_fingerprint, since, until,
                                                         batch):
            yield record
        self._after("list_newest_first", failure)

    async def find_by_idempotency_key(self, owner_fingerprint: str, key: str) -> JobRecord | None:
        return await self._call(
            "find_by_idempotency_key",
            lambda: self.inner.find_by_idempotency_key(owner_fingerprint, key),
        )

    async def read_document(self, name: str) -> Document | None:
        return await self._call("read_document", lambda: self.inner.read_document(name))

    async def write_document(self, name: str, body: bytes, version: int,
                             fence: Fence | None = None) -> bool:
        return await self._call("write_document",
                                lambda: self.inner.write_document(name, body, version, fence))

    async def close(self) -> None:
        """Never fails."""
        await self.inner.close()


class FlakyPayloadStore(_Faults):
    """A PayloadStore that passes through to ``inner`` unless told to fail.

    URL signing is local computation: it is counted but never fails.
    """

    def __init__(self, inner: PayloadStore) -> None:
        super().__init__("payloads")
        self.inner = inner

    async def put_input(self, job_id: str, program: bytes, tags: ObjectTags | None = None) -> None:
        await self._call("put_input", lambda: self.inner.put_input(job_id, program, tags))

    async def get_input(self, job_id: str) -> bytes | None:
        return await self._call("get_input", lambda: self.inner.get_input(job_id))

    async def delete_input(self, job_id: str) -> None:
        await self._call("delete_input", lambda: self.inner.delete_input(job_id))

    def upload_url(self, job_id: str, expires_in: timedelta,
                   handover: int | None = None) -> SignedUrl:
        self.calls["upload_url"] += 1
        return self.inner.upload_url(job_id, expires_in, handover)

    def download_url(self, job_id: str, expires_in: timedelta) -> SignedUrl:
        self.calls["download_url"] += 1
        return self.inner.download_url(job_id, expires_in)

    async def result_exists(self, job_id: str, handover: int | None = None) -> bool:
        return await self._call("result_exists",
                                lambda: self.inner.result_exists(job_id, handover))

    async def promote_result(self, job_id: str, handover: int) -> bool:
        return await self._call("promote_result",
                                lambda: self.inner.promote_result(job_id, handover))

    async def discard_results(self, job_id: str, handovers: Sequence[int]) -> None:
        await self._call("discard_results",
                         lambda: self.inner.discard_results(job_id, handovers))

    async def seal_result(self, job_id: str, tags: ObjectTags) -> None:
        await self._call("seal_result", lambda: self.inner.seal_result(job_id, tags))

    async def close(self) -> None:
        """Never fails."""
        await self.inner.close()


class FlakyBesideRecords(FlakyPayloadStore):
    """A FlakyPayloadStore over a store that keeps programs beside the records
    (InputsBesideRecords: standalone), its own two calls counted and failing alike."""

    def __init__(self, inner: SqliteInputsPayloadStore) -> None:
        super().__init__(inner)
        self.beside = inner

    async def create_with_input(self, record: JobRecord, program: bytes) -> None:
        await self._call("create_with_input",
                         lambda: self.beside.create_with_input(record, program))

    async def get_inputs(self, job_ids: Sequence[str]) -> dict[str, bytes]:
        return await self._call("get_inputs", lambda: self.beside.get_inputs(job_ids))


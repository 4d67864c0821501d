"""What a recovery leaves behind: jobs queued without their programs, read ahead or at
the hand-over; a job whose program or backend is gone FAILS, once, with why and when;
and when the store fails meanwhile, the job stays queued.

Driven over tests/unit/test_job_rules.py's Harness. Each test was seen failing on the
mutants it was written for (docs/mutation.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from job_manager.model import JobStatus
from job_manager.phases import recovery as recovery_phase
from job_manager.stores import PayloadStore
from job_manager.stores.local_payload_store import LocalPayloadStore, SqliteInputsPayloadStore
from job_manager.stores.sqlite_job_store import SqliteJobStore
from tests.faults import FlakyBesideRecords, FlakyJobStore, FlakyPayloadStore
from tests.helpers import refused_as
from tests.unit.test_job_rules import ALICE, EMULATOR_ONLY, Harness, h, spec
from tests.unit.test_manager_paths import ROOT

__all__ = ["h"]  # the fixture, shared with test_job_rules


async def _recovered_without(h: Harness, program: bool = True) -> str:
    """A queued job found at a restart; ``program=False``: its program is gone."""
    job = await h.submit()
    if not program:
        await h.local.delete_input(job)
    await h.restart()
    return job


async def test_a_job_whose_backend_is_gone_fails_at_recovery_with_why_and_when(
        h: Harness) -> None:
    job = await h.submit(backend="qpu")
    h.clock.advance(3)
    manager = await h.restart(EMULATOR_ONLY)
    stored = await h.stored(job)
    assert (stored.status, stored.status_detail, stored.finished_at) == (
        JobStatus.FAILED, "backend qpu is no longer known", h.clock.now())
    assert manager.live_jobs() == 0


async def test_a_keyed_retry_of_a_job_whose_backend_is_gone_fails_that_job(h: Harness) -> None:
    job = await h.manager.submit(ALICE, spec("qpu", key="k"))
    other = h.new_manager(EMULATOR_ONLY)  # another process, which never held the job
    assert await other.submit(ALICE, spec("qpu", key="k")) == job
    assert (await h.stored(job)).status is JobStatus.FAILED
    assert other.live_jobs() == 0


async def test_a_keyed_retry_whose_failing_of_the_job_fails_is_answered_store_failed(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    job = await h.manager.submit(ALICE, spec("qpu", key="k"))
    other = h.new_manager(EMULATOR_ONLY)
    h.jobs.fail_on("transition")
    await refused_as(other.submit(ALICE, spec("qpu", key="k")), "store_failed")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"job {job} could not be queued again: the store failed: "
        "jobs.transition: injected failure (before the call)"]
    assert (await h.stored(job)).status is JobStatus.QUEUED


async def test_a_submitted_job_is_handed_over_with_the_program_it_came_with(
        h: Harness) -> None:
    job = await h.submit(program=b"in hand")
    h.payloads.down = True  # the hand-over reads no store for it
    h.payloads.calls.clear()
    assignment = await h.assign()
    assert (assignment.record.job_id, assignment.program) == (job, b"in hand")
    assert h.payloads.calls["get_input"] == 0


async def test_read_ahead_reads_each_recovered_program_once_for_its_hand_over(
        h: Harness) -> None:
    jobs = [await h.submit(program=f"program {n}".encode()) for n in range(3)]
    manager = await h.restart()
    assert await manager.prefetch_programs() == 3
    assert h.payloads.calls["get_input"] == 3
    h.payloads.down = True  # the hand-overs need no store for their programs
    handed = {}
    for _ in jobs:
        assignment = await h.assign()
        handed[assignment.record.job_id] = assignment.program
    assert handed == {job: f"program {n}".encode() for n, job in enumerate(jobs)}


async def test_read_ahead_skips_a_job_cancelled_while_it_reads_another(h: Harness) -> None:
    first = await h.submit()
    h.clock.advance(1)
    second = await h.submit()
    manager = await h.restart()
    gate = h.payloads.gate("get_input")
    prefetch = asyncio.ensure_future(manager.prefetch_programs(concurrency=1))
    await h.payloads.held("get_input")  # the first program's read is under way
    await manager.cancel(ALICE, second)
    gate.set()
    assert await prefetch == 1
    assert h.payloads.calls["get_input"] == 1  # the cancelled job's program is not read
    assert (await h.assign()).record.job_id == first


class Counting(FlakyPayloadStore):
    """Counts the reads of programs under way at once."""

    def __init__(self, inner: PayloadStore) -> None:
        super().__init__(inner)
        self.reading = self.most = 0

    async def get_input(self, job_id: str) -> bytes | None:
        self.reading += 1
        self.most = max(self.most, self.reading)
        try:
            await asyncio.sleep(0.001)
            return await super().get_input(job_id)
        finally:
            self.reading -= 1


class CountingHarness(Harness):
    def _open_stores(self) -> tuple[FlakyJobStore, FlakyPayloadStore]:
        jobs, payloads = super()._open_stores()
        return jobs, Counting(payloads.inner)


async def test_read_ahead_reads_eight_programs_at_a_time(tmp_path: Path) -> None:
    h = CountingHarness(tmp_path)
    for _ in range(12):
        await h.submit(ROOT)
    manager = await h.restart()
    assert await manager.prefetch_programs() == 12
    assert isinstance(h.payloads, Counting) and h.payloads.most == 8
    await h.close()


async def test_a_program_gone_at_the_hand_over_fails_the_job_and_frees_its_slot(
        h: Harness) -> None:
    job = await _recovered_without(h, program=False)
    assert await h.manager.assign("emulator") is None
    assert (await h.stored(job)).status is JobStatus.FAILED
    assert ("finished", job) in h.events.seen
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0
    assert h.manager.live_jobs() == 0


async def test_a_program_gone_whose_failing_fails_leaves_the_job_queued(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    job = await _recovered_without(h, program=False)
    h.jobs.fail_on("transition")
    await refused_as(h.manager.assign("emulator"), "store_failed")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"job {job} could not be failed (it stays queued): the store failed: "
        "jobs.transition: injected failure (before the call)"]
    assert h.manager.queue_length("emulator") == 1
    assert await h.manager.assign("emulator") is None  # the next hand-over fails it
    assert (await h.stored(job)).status is JobStatus.FAILED


async def test_a_program_gone_of_a_job_cancelled_elsewhere_believes_the_store(
        h: Harness) -> None:
    job = await _recovered_without(h, program=False)
    stored = await h.stored(job)  # another process cancels it: the store says so
    assert await h.jobs.inner.transition(
        stored, replace(stored, status=JobStatus.CANCELLED, finished_at=h.clock.now()))
    assert await h.manager.assign("emulator") is None
    assert h.manager.live_jobs() == 0
    assert (await h.manager.status(ALICE, job)).status is JobStatus.CANCELLED


async def test_a_cancel_while_read_ahead_fails_a_job_waits_for_it(h: Harness) -> None:
    job = await _recovered_without(h, program=False)
    gate = h.jobs.gate("transition")
    prefetch = asyncio.ensure_future(h.manager.prefetch_programs())
    await h.jobs.held("transition")
    cancel = asyncio.ensure_future(h.manager.cancel(ALICE, job))
    await asyncio.sleep(0.01)
    assert not cancel.done()  # it waits for the failing under way
    gate.set()
    await prefetch
    # Answered with what the job became, not with the QUEUED memory held before.
    await refused_as(cancel, "job_not_cancellable", job_id=job, status="FAILED")


# --- read ahead beside the records (standalone) ---------------------------------------
class BesideRecordsHarness(Harness):
    """The standalone stores: each program in the job database beside its record."""

    def _open_stores(self) -> tuple[FlakyJobStore, FlakyPayloadStore]:
        database = SqliteJobStore(self.directory / "jobs.sqlite3")
        payloads = SqliteInputsPayloadStore(self.directory / "payloads", self.signer,
                                            "http://127.0.0.1:1", self.clock, database)
        return FlakyJobStore(database), FlakyBesideRecords(payloads)


@pytest.fixture
async def beside(tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BesideRecordsHarness]:
    monkeypatch.setattr(recovery_phase, "PREFETCH_BATCH", 4)
    harness = BesideRecordsHarness(tmp_path)
    yield harness
    await harness.close()


async def _submitted(h: Harness, count: int) -> list[str]:
    jobs = []
    for n in range(count):
        jobs.append(await h.submit(program=f"program {n}".encode()))
        h.clock.advance(1)  # oldest first is the order of submission
    return jobs


async def test_read_ahead_beside_the_records_reads_a_batch_of_programs_at_once(
        beside: BesideRecordsHarness) -> None:
    jobs = await _submitted(beside, 10)
    manager = await beside.restart()
    assert await manager.prefetch_programs() == 10
    assert beside.payloads.calls["get_inputs"] == 3  # batches of 4, 4 and 2
    assert beside.payloads.calls["get_input"] == 0
    beside.payloads.down = True  # the hand-overs need no store for their programs
    handed = [await beside.assign() for _ in jobs]
    assert [(a.record.job_id, a.program) for a in handed] == [
        (job, f"program {n}".encode()) for n, job in enumerate(jobs)]


async def test_a_program_the_database_lacks_is_read_alone_and_a_lost_one_fails_its_job(
        beside: BesideRecordsHarness) -> None:
    as_file, lost, kept = await _submitted(beside, 3)
    database = beside.payloads.inner
    assert isinstance(database, SqliteInputsPayloadStore)
    await database.delete_input(as_file)
    await LocalPayloadStore.put_input(database, as_file, b"an older directory's file")
    await database.delete_input(lost)
    manager = await beside.restart()
    assert await manager.prefetch_programs() == 2
    assert beside.payloads.calls["get_input"] == 2  # the two the batch did not find
    assert (await beside.stored(lost)).status is JobStatus.FAILED
    beside.payloads.down = True
    first, second = await beside.assign(), await beside.assign()
    assert (first.record.job_id, first.program) == (as_file, b"an older directory's file")
    assert (second.record.job_id, second.program) == (kept, b"program 2")


async def test_a_batch_that_cannot_be_read_is_read_a_program_at_a_time(
        beside: BesideRecordsHarness, caplog: pytest.LogCaptureFixture) -> None:
    await _submitted(beside, 3)
    manager = await beside.restart()
    beside.payloads.fail_on("get_inputs")
    assert await manager.prefetch_programs() == 3
    assert beside.payloads.calls["get_input"] == 3
    assert "programs of 3 jobs not read together" in caplog.text


async def test_a_job_handed_over_while_its_batch_is_read_is_not_counted_again(
        beside: BesideRecordsHarness) -> None:
    first, second = await _submitted(beside, 2)
    manager = await beside.restart()
    gate = beside.payloads.gate("get_inputs")
    prefetch = asyncio.ensure_future(manager.prefetch_programs())
    await beside.payloads.held("get_inputs")
    handed = await beside.assign()  # reads its own program meanwhile
    assert (handed.record.job_id, handed.program) == (first, b"program 0")
    gate.set()
    assert await prefetch == 1  # only the job still queued got its program from the batch
    beside.payloads.down = True
    last = await beside.assign()
    assert (last.record.job_id, last.program) == (second, b"program 1")



async def test_a_recovery_of_many_jobs_lets_the_loop_run_while_it_queues_them(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 27, item 7: a takeover of a queue of a million jobs held the event loop for
    # the whole admission (about 10 s), longer than the lease's renewal may wait. Here
    # the slices are small; another task must see the queue part-filled at least once.
    from job_manager import ledger as ledger_module
    monkeypatch.setattr(ledger_module, "ADMIT_SLICE", 10, raising=False)
    jobs = [await h.submit(ROOT) for _ in range(35)]
    h.manager.shutdown()
    await h.jobs.close()
    await h.payloads.close()
    h.jobs, h.payloads = h._open_stores()
    h.manager = h.new_manager()
    seen: set[int] = set()
    recovering = True

    async def look() -> None:
        while recovering:
            seen.add(h.manager.queue_length("emulator"))
            await asyncio.sleep(0)

    looking = asyncio.create_task(look())
    await h.manager.recover()
    recovering = False
    await looking
    assert h.manager.queue_length("emulator") == len(jobs)
    assert seen - {0, len(jobs)}, f"the loop never ran during the admission: saw {seen}"

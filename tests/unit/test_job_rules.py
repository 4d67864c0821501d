"""The rules a job lives by (docs/job-rules.md), each proved by injecting the fault it is about.

JobManager is driven directly (no gRPC) over real stores: SqliteJobStore on a file and
LocalPayloadStore in a directory, wrapped by tests/faults.py, on a FakeClock. A
"restart" closes the stores, reopens them over the same files and runs recover() on a
new JobManager, as a new process would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backend_manager.status import parse_backend_table
from common.clock import FakeClock
from common.identity import Principal, Role, fingerprint
from job_manager.limits import Limits, RoleLimits
from job_manager.manager import Assignment, ExecutionReport, JobManager, JobSpec
from job_manager.model import JobRecord, JobStatus
from job_manager.stores.local_payload_store import LocalPayloadStore
from job_manager.stores.payload_store import handover_result_key, input_key, result_key
from job_manager.stores.sqlite_job_store import SqliteJobStore
from job_manager.stores.url_signer import UrlSigner
from message_manager import SchedulerError
from tests.faults import FlakyJobStore, FlakyPayloadStore

MB = 1024 * 1024
GRACE_S = 60.0
WINDOW = timedelta(hours=24)

ALICE = Principal("alice", Role.DEVELOPER, fingerprint("token-alice"))
BOB = Principal("bob", Role.DEVELOPER, fingerprint("token-bob"))

BACKENDS = """
[backends.emulator.developer]
status = "available"
[backends.emulator.admin]
status = "available"
[backends.qpu.developer]
status = "available"
[backends.qpu.admin]
status = "available"
"""
EMULATOR_ONLY = """
[backends.emulator.developer]
status = "available"
[backends.emulator.admin]
status = "available"
"""


def limits() -> Limits:
    """The defaults of scheduler/wiring/config.py."""
    return Limits(
        by_role={
            Role.ADMIN: RoleLimits(1000, 10 * MB, 3600.0),
            Role.DEVELOPER: RoleLimits(10, 10 * MB, 600.0),
            Role.GUEST: RoleLimits(5, 1 * MB, 300.0),
        },
        max_queue_bytes=100 * MB,
        max_shots=1_000_000,
    )


def spec(
    backend: str = "emulator",
    *,
    timeout_s: float = 30.0,
    program: bytes = b"program",
    key: str = "",
) -> JobSpec:
    return JobSpec(
        backend=backend,
        settings=b"settings",
        timeout_s=timeout_s,
        n_shots=100,
        program=program,
        request_bytes=len(program) + 50,
        idempotency_key=key,
    )


def report(job_id: str, outcome: JobStatus = JobStatus.COMPLETED) -> ExecutionReport:
    return ExecutionReport(job_id=job_id, outcome=outcome)


async def refused(call: Awaitable[Any], code: str) -> SchedulerError:
    """``call`` raises a SchedulerError with ``code``."""
    with pytest.raises(SchedulerError) as info:
        await call
    assert info.value.code == code, f"{info.value.key}: {info.value}"
    return info.value


class Events:
    """A JobObserver that writes down what it is told: (event, job id)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.refusals: list[tuple[str, str, str]] = []  # (backend, role, code): metric labels

    def submitted(self, record: JobRecord) -> None:
        self.seen.append(("submitted", record.job_id))

    def refused(self, backend: str, role: str, code: str) -> None:
        self.seen.append(("refused", code))
        self.refusals.append((backend, role, code))

    def handed_over(self, record: JobRecord) -> None:
        self.seen.append(("started", record.job_id))

    def requeued(self, record: JobRecord) -> None:
        self.seen.append(("requeued", record.job_id))

    def given_back(self, record: JobRecord) -> None:
        self.seen.append(("returned", record.job_id))

    def finished(self, record: JobRecord) -> None:
        self.seen.append(("finished", record.job_id))

    def timestamps_clamped(self, record: JobRecord, count: int) -> None:
        self.seen.extend([("clamped", record.job_id)] * count)


class Harness:
    """A JobManager over fault-injecting real stores in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.clock = FakeClock()
        self.events = Events()
        self.signer = UrlSigner(b"k" * 32)
        self.jobs, self.payloads = self._open_stores()
        self.manager = self.new_manager()

    def _open_stores(self) -> tuple[FlakyJobStore, FlakyPayloadStore]:
        jobs = FlakyJobStore(SqliteJobStore(self.directory / "jobs.sqlite3"))
        payloads = FlakyPayloadStore(
            LocalPayloadStore(
                self.directory / "payloads", self.signer, "http://127.0.0.1:1", self.clock
            )
        )
        return jobs, payloads

    def new_manager(self, backends: str = BACKENDS, **settings: Any) -> JobManager:
        """Another JobManager over the same stores (not recovered); ``settings`` replace
        the defaults of its constructor (``limits``, ``unify_backends``...)."""
        options: dict[str, Any] = {
            "limits": limits(), "report_grace_s": GRACE_S, "idempotency_window": WINDOW,
            "observer": self.events, **settings}
        manager = JobManager(jobs=self.jobs, payloads=self.payloads, clock=self.clock,
                             **options)
        manager.use_backends(parse_backend_table(backends))
        return manager

    async def restart(self, backends: str = BACKENDS) -> JobManager:
        """The process stops; a new one opens the same files and recovers."""
        self.manager.shutdown()
        await self.jobs.close()
        await self.payloads.close()
        self.jobs, self.payloads = self._open_stores()
        self.manager = self.new_manager(backends)
        await self.manager.recover()
        return self.manager

    async def close(self) -> None:
        self.manager.shutdown()
        await self.jobs.close()
        await self.payloads.close()

    # --- the truth, read past the fault injection ------------------------------------
    @property
    def local(self) -> LocalPayloadStore:
        assert isinstance(self.payloads.inner, LocalPayloadStore)
        return self.payloads.inner

    async def stored(self, job_id: str) -> JobRecord:
        record = await self.jobs.inner.get(job_id)
        assert record is not None, f"job {job_id} has no record"
        return record

    async def records(self, *statuses: JobStatus) -> list[JobRecord]:
        """Every stored record with one of ``statuses`` (all statuses by default)."""
        found = []
        for status in statuses or tuple(JobStatus):
            found += [r async for r in self.jobs.inner.list_by_status(status)]
        return found

    def inputs(self) -> list[str]:
        """The names of the programs kept in the payload directory."""
        return sorted(p.name for p in (self.directory / "payloads").glob("*.in.proto"))

    # --- steps -----------------------------------------------------------------------
    async def submit(self, principal: Principal = ALICE, **kwargs: Any) -> str:
        return await self.manager.submit(principal, spec(**kwargs))

    async def assign(self, backend: str = "emulator") -> Assignment:
        assignment = await self.manager.assign(backend)
        assert assignment is not None, f"no job for {backend}"
        return assignment

    async def upload_result(self, job_id: str) -> None:
        """The node's upload, to the key its hand-over's URL names (with requeues, one of
        the hand-over's own: docs/protocol.md)."""
        live = self.manager.live(job_id)
        key = result_key(job_id)
        if live is not None and live.status is JobStatus.RUNNING and self.manager.accepts_result(
                job_id, live.requeues):
            key = handover_result_key(job_id, live.requeues)
        await self.local.save_result(key, b"result", {})

    async def complete(self, job_id: str, node: str = "") -> JobRecord:
        await self.upload_result(job_id)
        return await self.manager.report(report(job_id), node)

    async def status(self, job_id: str, principal: Principal = ALICE) -> JobStatus:
        return (await self.manager.status(principal, job_id)).status


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.close()


async def assert_nothing_kept(h: Harness) -> None:
    assert await h.records() == [], "a record was left"
    assert h.inputs() == [], "a program was left"
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).all_queued_bytes == 0
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).queued_bytes == 0
    assert h.manager.queue_length("emulator") == 0
    assert h.manager.live_jobs() == 0
    assert await h.manager.assign("emulator") is None


# --- 1. Acknowledge only what is durable --------------------------------------------------
async def test_durable_input_write_fails_leaves_nothing(h: Harness) -> None:
    h.payloads.fail_on("put_input")
    await refused(h.submit(), "INTERNAL")
    assert h.payloads.calls["put_input"] == 1
    await assert_nothing_kept(h)


async def test_durable_record_write_fails_deletes_the_input(h: Harness) -> None:
    h.jobs.fail_on("create")
    await refused(h.submit(), "INTERNAL")
    assert h.payloads.calls["put_input"] == 1, "the input was written first"
    assert h.payloads.calls["delete_input"] == 1
    await assert_nothing_kept(h)


async def test_durable_reservations_released_after_failed_writes(h: Harness) -> None:
    # More failures than the developer may have live jobs (10): a leak would refuse the 11th.
    h.jobs.fail_on("create", times=11)
    for _ in range(11):
        await refused(h.submit(), "INTERNAL")
    job_id = await h.submit()
    assert (await h.assign()).record.job_id == job_id


async def test_durable_record_written_but_answer_lost_is_acknowledged_and_runs(
    h: Harness,
) -> None:
    """The record was written, only the store's answer was lost: the job is durable.

    The manager reads the record back, so the user gets the job id and a node the job.
    """
    h.jobs.fail_on("create", after=True)
    job_id = await h.submit()
    [record] = await h.records()
    assert record.job_id == job_id and record.status is JobStatus.QUEUED
    assignment = await h.assign()
    assert assignment.record.job_id == job_id
    assert assignment.program == b"program"


async def test_durable_record_of_unknown_outcome_is_queued_after_restart(h: Harness) -> None:
    """Written, answer lost, and the read-back fails too: the user got INTERNAL.

    Allowed: the record sits QUEUED in the store, not in this process's memory; its
    input is kept. Required: it is not lost: the next start queues it and a node gets it.
    """
    h.jobs.fail_on("create", after=True)
    h.jobs.fail_on("get")
    await refused(h.submit(), "INTERNAL")
    [record] = await h.records()
    assert record.status is JobStatus.QUEUED

    manager = await h.restart()
    assert (await h.stored(record.job_id)).status is JobStatus.QUEUED, (
        await h.stored(record.job_id)
    ).status_detail
    assert manager.queue_length("emulator") == 1
    assignment = await h.assign()
    assert assignment.record.job_id == record.job_id
    assert assignment.program == b"program"


async def test_durable_retry_with_key_after_lost_answer_gets_a_job_that_runs(
    h: Harness,
) -> None:
    """The SDK retries with its idempotency key after an INTERNAL: that one job must run."""
    h.jobs.fail_on("create", after=True)
    h.jobs.fail_on("get")
    await refused(h.submit(key="retry-1"), "INTERNAL")
    job_id = await h.submit(key="retry-1")
    assignment = await h.manager.assign("emulator")
    assert assignment is not None, "the job id given to the user is in no queue"
    assert assignment.record.job_id == job_id
    assert len(await h.records(JobStatus.QUEUED, JobStatus.RUNNING)) == 1


# --- 2. Compare-and-set -------------------------------------------------------------------
async def test_cas_cancel_racing_assignment_node_wins(h: Harness) -> None:
    job_id = await h.submit()
    release = h.jobs.gate("transition")
    assigning = asyncio.create_task(h.manager.assign("emulator"))
    await h.jobs.held("transition")  # QUEUED→RUNNING is in flight
    cancelling = asyncio.create_task(h.manager.cancel(ALICE, job_id))
    await asyncio.sleep(0.01)
    release.set()
    assignment, cancelled = await asyncio.gather(assigning, cancelling, return_exceptions=True)

    assert isinstance(assignment, Assignment) and assignment.record.job_id == job_id
    assert isinstance(cancelled, SchedulerError) and cancelled.code == "FAILED_PRECONDITION"
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    assert await h.status(job_id) is JobStatus.RUNNING


async def test_cas_assignment_racing_cancel_cancel_wins(h: Harness) -> None:
    job_id = await h.submit()
    release = h.jobs.gate("transition")
    cancelling = asyncio.create_task(h.manager.cancel(ALICE, job_id))
    await h.jobs.held("transition")  # QUEUED→CANCELLED is in flight
    assigning = asyncio.create_task(h.manager.assign("emulator"))
    await asyncio.sleep(0.01)
    release.set()
    cancelled, assignment = await asyncio.gather(cancelling, assigning, return_exceptions=True)

    assert isinstance(cancelled, JobRecord) and cancelled.status is JobStatus.CANCELLED
    assert assignment is None
    assert (await h.stored(job_id)).status is JobStatus.CANCELLED
    assert await h.manager.assign("emulator") is None
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).all_queued_bytes == 0


async def test_cas_final_status_never_changes(h: Harness) -> None:
    job_id = await h.submit()
    await h.assign()
    await h.complete(job_id)

    await refused(h.manager.report(report(job_id, JobStatus.FAILED)), "FAILED_PRECONDITION")
    await refused(h.manager.report(report(job_id, JobStatus.TIMEOUT)), "FAILED_PRECONDITION")
    await refused(h.manager.cancel(ALICE, job_id), "FAILED_PRECONDITION")
    assert (await h.stored(job_id)).status is JobStatus.COMPLETED
    assert await h.status(job_id) is JobStatus.COMPLETED


async def test_cas_two_processes_never_assign_a_job_twice(h: Harness) -> None:
    """Two managers hold the same QUEUED job (a stale process): the store decides."""
    job_id = await h.submit()
    other = h.new_manager()
    await other.recover()
    assert other.queue_length("emulator") == 1

    first = await h.assign()
    assert first.record.job_id == job_id
    assert await other.assign("emulator") is None
    assert (await h.stored(job_id)).dequeued_at == first.record.dequeued_at
    # The store said RUNNING: the other process watches it as running from now on (it
    # times out there too if its node is gone), and holds none of it as queued.
    assert other.live_jobs() == 1
    assert other.queue_length("emulator") == 0
    assert other.usage(ALICE.fingerprint, ALICE.role).all_queued_bytes == 0
    assert other.deadlines_watched() == 1


async def test_cas_stale_process_report_cannot_change_a_final_status(h: Harness) -> None:
    job_id = await h.submit()
    await h.assign()
    other = h.new_manager()  # a newer process, which watched the job and got its report
    await other.recover()
    await h.upload_result(job_id)
    await other.report(report(job_id))

    # The stale process still holds the job RUNNING in memory; the store refuses it.
    await refused(h.manager.report(report(job_id, JobStatus.FAILED)), "FAILED_PRECONDITION")
    assert (await h.stored(job_id)).status is JobStatus.COMPLETED


async def test_cas_report_racing_the_watchdog_report_wins(h: Harness) -> None:
    job_id = await h.submit()
    await h.assign()
    await h.upload_result(job_id)
    release = h.jobs.gate("transition")
    reporting = asyncio.create_task(h.manager.report(report(job_id)))
    await h.jobs.held("transition")  # RUNNING→COMPLETED is in flight
    h.clock.advance(30 + GRACE_S + 1)
    checking = asyncio.create_task(h.manager.check_deadlines())
    await asyncio.sleep(0.01)
    release.set()
    finished, _ = await asyncio.gather(reporting, checking)

    assert finished.status is JobStatus.COMPLETED
    assert (await h.stored(job_id)).status is JobStatus.COMPLETED
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0


# --- 3. A store failure never loses a job -------------------------------------------------
async def test_store_failure_during_assign_puts_the_job_back_in_its_place(h: Harness) -> None:
    first = await h.submit(ALICE)
    h.clock.advance(1)
    second = await h.submit(BOB)
    h.jobs.fail_on("transition")
    await refused(h.manager.assign("emulator"), "INTERNAL")
    assert (await h.stored(first)).status is JobStatus.QUEUED
    assert await h.status(first) is JobStatus.QUEUED
    assert h.manager.queue_length("emulator") == 2

    h.clock.advance(1)
    later = await h.submit(ALICE)
    order = [(await h.assign()).record.job_id for _ in range(3)]
    # Bob's job must not overtake: the failed hand-over did not use Alice's turn.
    assert order == [first, second, later]
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).all_queued_bytes == 0


async def test_store_failure_during_cancel_keeps_the_job_queued(h: Harness) -> None:
    job_id = await h.submit()
    h.jobs.fail_on("transition")
    await refused(h.manager.cancel(ALICE, job_id), "INTERNAL")
    assert (await h.stored(job_id)).status is JobStatus.QUEUED
    assert await h.status(job_id) is JobStatus.QUEUED
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).all_queued_bytes == len(b"program")
    assert (await h.assign()).record.job_id == job_id


async def test_store_failure_during_report_keeps_the_job_running(h: Harness) -> None:
    job_id = await h.submit()
    await h.assign()
    await h.upload_result(job_id)
    h.jobs.fail_on("transition")
    await refused(h.manager.report(report(job_id)), "INTERNAL")
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    assert await h.status(job_id) is JobStatus.RUNNING
    assert (await h.manager.report(report(job_id))).status is JobStatus.COMPLETED


# --- 4. A restart loses nothing -----------------------------------------------------------
async def test_restart_reloads_queued_jobs_with_queued_at_and_order(h: Harness) -> None:
    submitted = []
    for _ in range(6):
        submitted.append(await h.submit())
        h.clock.advance(10)
    queued_at = {job_id: (await h.stored(job_id)).queued_at for job_id in submitted}

    h.clock.advance(100)
    manager = await h.restart()
    assert manager.queue_length("emulator") == 6
    assert manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 6
    assert manager.usage(ALICE.fingerprint, ALICE.role).all_queued_bytes == 6 * len(b"program")
    for job_id in submitted:
        assert (await manager.status(ALICE, job_id)).queued_at == queued_at[job_id]
    assigned = [(await h.assign()).record for _ in submitted]
    assert [r.job_id for r in assigned] == submitted
    assert [r.queued_at for r in assigned] == [queued_at[j] for j in submitted]


async def test_restart_keeps_running_jobs_running_and_watched(h: Harness) -> None:
    job_id = await h.submit()
    await h.assign()
    manager = await h.restart()
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    assert await h.status(job_id) is JobStatus.RUNNING
    assert manager.deadlines_watched() == 1
    assert manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 1
    assert (await h.complete(job_id)).status is JobStatus.COMPLETED


async def test_restart_fails_a_queued_job_whose_program_is_missing(h: Harness) -> None:
    job_id = await h.submit()
    await h.local.delete_input(job_id)
    manager = await h.restart()
    assert await manager.prefetch_programs() == 0  # read ahead after the recovery
    record = await h.stored(job_id)
    assert record.status is JobStatus.FAILED
    assert "program" in record.status_detail and "missing" in record.status_detail
    assert manager.status_detail(await manager.status(ALICE, job_id)) == record.status_detail
    assert manager.queue_length("emulator") == 0
    assert manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0


async def test_a_recovered_job_whose_program_vanished_fails_at_its_hand_over(
        h: Harness) -> None:
    lost = await h.submit()
    h.clock.advance(1)  # queued after it: the order after the restart does not hang on ids
    kept = await h.submit()
    manager = await h.restart()  # recovered without programs, none read ahead yet
    await h.local.delete_input(lost)
    assigned = await manager.assign("emulator")
    assert assigned is not None and assigned.record.job_id == kept
    assert assigned.program == b"program"  # read at the hand-over
    record = await h.stored(lost)
    assert record.status is JobStatus.FAILED and "missing" in record.status_detail
    assert manager.queue_length("emulator") == 0
    assert manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 1  # the one running


async def test_restart_fails_a_queued_job_whose_backend_is_gone(h: Harness) -> None:
    gone = await h.submit(backend="qpu")
    kept = await h.submit(backend="emulator")
    manager = await h.restart(backends=EMULATOR_ONLY)
    record = await h.stored(gone)
    assert record.status is JobStatus.FAILED
    assert "qpu" in record.status_detail
    assert (await h.stored(kept)).status is JobStatus.QUEUED
    assert manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 1
    assert (await h.assign()).record.job_id == kept


# --- 5. Nothing stays RUNNING forever -----------------------------------------------------
async def test_watchdog_times_out_after_timeout_plus_grace(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    h.clock.advance(89)
    await h.manager.check_deadlines()
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    assert await h.status(job_id) is JobStatus.RUNNING

    h.clock.advance(2)
    await h.manager.check_deadlines()
    stored = await h.stored(job_id)
    assert stored.status is JobStatus.TIMEOUT
    assert "never reported" in stored.status_detail
    seen = await h.manager.status(ALICE, job_id)
    assert seen.status is JobStatus.TIMEOUT
    assert "never reported" in h.manager.status_detail(seen)
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0


async def test_watchdog_leaves_a_reported_job_alone(h: Harness) -> None:
    completed = await h.submit(timeout_s=30)
    failed = await h.submit(timeout_s=30)
    await h.assign()
    await h.assign()
    h.clock.advance(10)
    await h.complete(completed)
    await h.manager.report(report(failed, JobStatus.FAILED))
    h.clock.advance(81)
    await h.manager.check_deadlines()
    assert (await h.stored(completed)).status is JobStatus.COMPLETED
    assert (await h.stored(failed)).status is JobStatus.FAILED


async def test_watchdog_deadline_survives_a_restart(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    h.clock.advance(50)
    manager = await h.restart()
    h.clock.advance(39)  # t0 + 89: the deadline comes from the stored dequeued_at
    await manager.check_deadlines()
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    h.clock.advance(2)
    await manager.check_deadlines()
    stored = await h.stored(job_id)
    assert stored.status is JobStatus.TIMEOUT
    assert "never reported" in stored.status_detail


async def test_watchdog_retries_while_the_store_is_down(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    h.clock.advance(91)
    h.jobs.down = True
    await h.manager.check_deadlines()
    h.jobs.down = False
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    assert await h.status(job_id) is JobStatus.RUNNING

    h.clock.advance(5)
    await h.manager.check_deadlines()
    assert (await h.stored(job_id)).status is JobStatus.TIMEOUT
    assert await h.status(job_id) is JobStatus.TIMEOUT


# --- 6. Reports ---------------------------------------------------------------------------
async def test_report_success_needs_the_result(h: Harness) -> None:
    job_id = await h.submit()
    await h.assign()
    await refused(h.manager.report(report(job_id)), "FAILED_PRECONDITION")
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    assert await h.status(job_id) is JobStatus.RUNNING

    await h.local.save_result(result_key(job_id), b"...", {})
    assert (await h.manager.report(report(job_id))).status is JobStatus.COMPLETED
    again = await h.manager.report(report(job_id))  # the node retried: answered OK
    assert again.status is JobStatus.COMPLETED
    assert (await h.stored(job_id)).status is JobStatus.COMPLETED
    record, url = await h.manager.result(ALICE, job_id)
    assert record.status is JobStatus.COMPLETED and url is not None


async def test_report_for_a_queued_job_is_refused(h: Harness) -> None:
    job_id = await h.submit()
    await refused(h.manager.report(report(job_id, JobStatus.FAILED)), "FAILED_PRECONDITION")
    assert (await h.stored(job_id)).status is JobStatus.QUEUED
    assert (await h.assign()).record.job_id == job_id


async def test_refresh_upload_url_only_while_running(h: Harness) -> None:
    job_id = await h.submit()
    await refused(h.manager.refresh_upload_url(job_id), "FAILED_PRECONDITION")
    await h.assign()
    url = await h.manager.refresh_upload_url(job_id)
    assert result_key(job_id) in url.url
    await h.complete(job_id)
    await refused(h.manager.refresh_upload_url(job_id), "FAILED_PRECONDITION")


# --- 7. The live-job index answers for live jobs ------------------------------------------
async def test_status_of_live_jobs_costs_no_store_call(h: Harness) -> None:
    job_id = await h.submit()
    h.jobs.down = True  # any store read would fail
    assert await h.status(job_id) is JobStatus.QUEUED
    h.jobs.down = False
    await h.assign()
    h.jobs.down = True
    assert await h.status(job_id) is JobStatus.RUNNING
    h.jobs.down = False
    assert h.jobs.calls["get"] == 0


# --- Idempotent submissions ---------------------------------------------------------------
async def test_idempotency_same_key_same_job(h: Harness) -> None:
    first = await h.submit(key="k-1")
    again = await h.submit(key="k-1")
    assert again == first
    assert [r.job_id for r in await h.records()] == [first]
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 1


async def test_idempotency_key_belongs_to_its_token(h: Harness) -> None:
    alices = await h.submit(ALICE, key="k-1")
    bobs = await h.submit(BOB, key="k-1")
    assert alices != bobs
    assert len(await h.records()) == 2


async def test_idempotency_concurrent_submissions_make_one_job(h: Harness) -> None:
    ids = await asyncio.gather(*(h.submit(key="k-1") for _ in range(3)))
    assert len(set(ids)) == 1
    assert len(await h.records()) == 1
    assert h.inputs() == [input_key(ids[0])]


async def test_idempotency_finished_job_within_window_same_id(h: Harness) -> None:
    first = await h.submit(key="k-1")
    await h.assign()
    await h.complete(first)
    h.clock.advance(3600)
    assert await h.submit(key="k-1") == first
    assert len(await h.records()) == 1


async def test_idempotency_after_the_window_a_new_job(h: Harness) -> None:
    first = await h.submit(key="k-1")
    await h.manager.cancel(ALICE, first)
    h.clock.advance(WINDOW.total_seconds() + 1)
    second = await h.submit(key="k-1")
    assert second != first
    assert len(await h.records()) == 2


async def test_idempotency_after_the_window_a_new_job_while_first_is_queued(
    h: Harness,
) -> None:
    first = await h.submit(key="k-1")
    h.clock.advance(WINDOW.total_seconds() + 1)
    second = await h.submit(key="k-1")
    assert second != first, "the key was honoured outside its window"
    assert len(await h.records()) == 2


async def test_idempotency_key_survives_a_restart(h: Harness) -> None:
    first = await h.submit(key="k-1")
    h.clock.advance(60)
    await h.restart()
    assert await h.submit(key="k-1") == first
    assert len(await h.records()) == 1


async def test_idempotency_key_of_a_finished_job_survives_a_restart(h: Harness) -> None:
    first = await h.submit(key="k-1")
    await h.assign()
    await h.complete(first)
    await h.restart()
    assert await h.submit(key="k-1") == first
    assert len(await h.records()) == 1


# --- Shutdown -----------------------------------------------------------------------------
async def test_shutdown_releases_a_waiting_node(h: Harness) -> None:
    waiting = asyncio.create_task(h.manager.assign("emulator", wait_s=10))
    while h.manager.waiting_nodes("emulator") == 0:
        await asyncio.sleep(0)
    h.manager.shutdown()
    assert await asyncio.wait_for(waiting, 1.0) is None
    assert await asyncio.wait_for(h.manager.assign("emulator", wait_s=10), 1.0) is None


# --- the queue's byte budget, and each token's share of it ---------------------------------
def _with_queue_budget(harness: Harness, total: int, share: float) -> None:
    queue_limits = replace(limits(), max_queue_bytes=total, max_queue_share=share)
    harness.manager = JobManager(jobs=harness.jobs, payloads=harness.payloads,
                                 limits=queue_limits, clock=harness.clock)
    harness.manager.use_backends(parse_backend_table(BACKENDS))


async def test_the_queue_byte_budget_refuses_the_job_that_would_pass_it(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    _with_queue_budget(harness, 100, share=1.0)
    try:
        await harness.submit(program=b"a" * 60)
        error = await refused(harness.submit(BOB, program=b"b" * 41), "RESOURCE_EXHAUSTED")
        assert "100 bytes" in str(error)
        await harness.submit(BOB, program=b"b" * 40)  # exactly full is allowed
        assert harness.manager.usage(ALICE.fingerprint, ALICE.role).all_queued_bytes == 100
        assert [r.owner_fingerprint for r in await harness.records()].count(BOB.fingerprint) == 1
    finally:
        await harness.close()


async def test_one_token_cannot_take_more_than_its_share_of_the_queues(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    _with_queue_budget(harness, 100, share=0.5)
    try:
        await harness.submit(program=b"a" * 30)
        error = await refused(harness.submit(program=b"a" * 21), "RESOURCE_EXHAUSTED")
        assert "50 of 100 bytes" in str(error) and "30 bytes" in str(error)
        await harness.submit(BOB, program=b"b" * 50)  # another user still gets in
        # Once the first job is handed over, its bytes leave the queue and the share.
        await harness.assign()
        await harness.submit(program=b"a" * 50)
        assert harness.manager.usage(ALICE.fingerprint, ALICE.role).queued_bytes == 50
    finally:
        await harness.close()

"""Every refusal of the JobManager, word for word: the catalogue entry a caller is sent
and the values its message names (the job, its status, the backends, the sizes).

tests/integration/test_refusals.py checks the same answers over gRPC; these drive the
manager directly over real stores (tests/unit/test_job_rules.py's Harness), fast enough
for the mutation run (docs/mutation.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from common.identity import Principal, Role, fingerprint
from job_manager.manager import JobManager, JobSpec
from job_manager.model import JobStatus, new_job_id
from job_manager.phases.core import UPLOAD_URL_LIFETIME
from job_manager.phases.submission import ASSIGNMENT_FRAMING_BYTES
from tests.helpers import refused_as
from tests.unit.test_job_rules import (
    ALICE,
    BOB,
    Harness,
    assert_nothing_kept,
    h,
    limits,
    report,
    spec,
)

__all__ = ["h"]  # the fixture, shared with test_job_rules

T = TypeVar("T")

KNOWN = "emulator, qpu"  # test_job_rules.BACKENDS, as a refusal lists them
GUEST = Principal("gus", Role.GUEST, fingerprint("token-gus"))
STATUSES = """
[backends.emulator.developer]
status = "available"
[backends.qpu.developer]
status = "maintenance"
description = "calibration until 18:00"
"""


async def answered(call: Callable[[], T]) -> T:
    """A synchronous call, awaitable, for refused_as."""
    return call()


def change_the_store_behind_its_back(h: Harness, statement: str, job_id: str) -> None:
    """What an operator (or a DynamoDB TTL) does to a record, outside the scheduler."""
    with contextlib.closing(sqlite3.connect(h.directory / "jobs.sqlite3")) as conn:
        conn.execute(statement, (job_id,))
        conn.commit()


# --- backends ---------------------------------------------------------------------------
async def test_a_submission_without_a_known_backend_is_told_the_known_ones(h: Harness) -> None:
    await refused_as(h.submit(backend=""), "backend_missing", known=KNOWN)
    await refused_as(h.submit(backend="nope"), "backend_unknown", backend="nope", known=KNOWN)
    # Counted under "unknown": a made-up name never becomes a metric label.
    assert h.events.refusals == [("unknown", "developer", "INVALID_ARGUMENT")] * 2


async def test_a_backend_closed_to_a_role_says_its_status_and_why(h: Harness) -> None:
    h.manager = h.new_manager(STATUSES)
    await refused_as(h.submit(backend="qpu"), "backend_not_available", backend="qpu",
                     status="maintenance", role="developer",
                     description="calibration until 18:00")
    await refused_as(h.submit(GUEST, backend="emulator"), "backend_not_available",
                     backend="emulator", status="unavailable", role="guest",
                     description="emulator is not offered to guest tokens")
    assert h.events.refusals == [("qpu", "developer", "UNAVAILABLE"),
                                 ("emulator", "guest", "UNAVAILABLE")]
    assert await h.records() == []


async def test_a_node_or_a_status_call_naming_an_unknown_backend_is_told_the_known_ones(
        h: Harness) -> None:
    await refused_as(h.manager.assign("nope"), "backend_unknown", backend="nope", known=KNOWN)
    await refused_as(answered(lambda: h.manager.service_status("nope", ALICE)),
                     "backend_unknown", backend="nope", known=KNOWN)
    await refused_as(answered(lambda: h.manager.service_status("", ALICE)),
                     "backend_missing", known=KNOWN)
    h.manager = h.new_manager(STATUSES)
    status, description = h.manager.service_status("qpu", ALICE)
    assert (status.value, description) == ("maintenance", "calibration until 18:00")


async def test_before_its_backend_table_is_loaded_the_scheduler_knows_no_backend(
        h: Harness) -> None:
    h.manager = JobManager(jobs=h.jobs, payloads=h.payloads, limits=limits(), clock=h.clock)
    await refused_as(h.submit(), "backend_unknown", backend="emulator", known="")
    await refused_as(h.manager.assign("emulator"), "backend_unknown", backend="emulator",
                     known="")
    assert h.manager.queue_length("emulator") == 0


async def test_a_job_too_large_to_hand_to_a_node_is_refused_naming_its_size(h: Harness) -> None:
    limit = 2000
    h.manager = h.new_manager(limits=replace(limits(), max_assignment_bytes=limit))
    settings = b"s" * 300
    # The assignment: program, settings, the upload URL (every job's is as long) and framing.
    url = len(h.payloads.upload_url(new_job_id(), UPLOAD_URL_LIFETIME).url)
    fits = limit - len(settings) - url - ASSIGNMENT_FRAMING_BYTES

    def sized(program_bytes: int) -> JobSpec:
        return replace(spec(program=b"p" * program_bytes), settings=settings)

    await refused_as(h.manager.submit(ALICE, sized(fits + 1)), "job_too_large_to_assign",
                     size=limit + 1, limit=limit)
    assert await h.records() == []
    job = await h.manager.submit(ALICE, sized(fits))
    assert (await h.stored(job)).input_size_bytes == fits


# --- jobs that are not there ------------------------------------------------------------
async def test_an_unknown_job_is_not_found_by_users_or_nodes(h: Harness) -> None:
    job = str(uuid.uuid4())
    for call in (h.manager.status(ALICE, job), h.manager.result(ALICE, job),
                 h.manager.cancel(ALICE, job), h.manager.report(report(job)),
                 h.manager.refresh_upload_url(job)):
        await refused_as(call, "job_not_found", job_id=job)
    assert not h.manager.accepts_result(job)


async def test_a_malformed_job_id_is_quoted_back_cut_at_64_characters(h: Harness) -> None:
    long = "x" * 100
    await refused_as(h.manager.status(ALICE, long), "job_id_malformed", value=repr("x" * 64))
    await refused_as(h.manager.report(report("not-a-job")), "job_id_malformed",
                     value=repr("not-a-job"))


async def test_an_unreadable_record_is_reported_as_such(h: Harness) -> None:
    job = await h.submit()
    change_the_store_behind_its_back(h, "UPDATE jobs SET record = '{' WHERE job_id = ?", job)
    elsewhere = h.new_manager()  # memory cannot answer for it there
    await refused_as(elsewhere.status(ALICE, job), "record_unreadable", job_id=job)


# --- a job's status stands in the way -----------------------------------------------------
async def test_a_result_asked_for_too_early_says_where_the_job_is(h: Harness) -> None:
    job = await h.submit()
    await refused_as(h.manager.result(ALICE, job), "result_not_ready", job_id=job,
                     status="QUEUED")
    await h.assign()
    await refused_as(h.manager.result(ALICE, job), "result_not_ready", job_id=job,
                     status="RUNNING")


async def test_a_refused_cancel_names_the_job_and_its_status(h: Harness) -> None:
    running = await h.submit()
    await h.assign()
    await refused_as(h.manager.cancel(ALICE, running), "job_not_cancellable", job_id=running,
                     status="RUNNING")
    # Memory says QUEUED, but another process handed the job over: the store's word.
    stale = await h.submit()
    other = h.new_manager()
    await other.recover()
    assert (await other.assign("emulator")) is not None
    await refused_as(h.manager.cancel(ALICE, stale), "job_not_cancellable", job_id=stale,
                     status="RUNNING")


async def test_a_cancel_of_a_job_whose_record_vanished_says_so(h: Harness) -> None:
    job = await h.submit()
    change_the_store_behind_its_back(h, "DELETE FROM jobs WHERE job_id = ?", job)
    await refused_as(h.manager.cancel(ALICE, job), "job_not_cancellable", job_id=job,
                     status="missing")
    assert h.manager.queue_length("emulator") == 0
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0


async def test_refused_reports_and_url_renewals_name_the_job_and_statuses(h: Harness) -> None:
    job = await h.submit()
    await refused_as(h.manager.report(report(job, JobStatus.FAILED)), "job_not_running",
                     job_id=job, status="QUEUED")
    await refused_as(h.manager.refresh_upload_url(job), "job_not_running", job_id=job,
                     status="QUEUED")
    await h.assign()
    await refused_as(h.manager.report(report(job)), "result_missing", job_id=job)
    await h.manager.report(report(job, JobStatus.FAILED))
    await refused_as(h.manager.report(report(job, JobStatus.TIMEOUT)), "report_conflict",
                     job_id=job, status="FAILED", reported="TIMEOUT")
    await refused_as(h.manager.refresh_upload_url(job), "job_not_running", job_id=job,
                     status="FAILED")


async def test_a_stale_process_is_answered_with_how_the_job_really_ended(h: Harness) -> None:
    job = await h.submit()
    await h.assign()
    # Two more processes took the job over while it ran; one of them got the report.
    newer, stale = h.new_manager(), h.new_manager()
    await newer.recover()
    await stale.recover()
    await h.upload_result(job)
    await newer.report(report(job))
    h.clock.advance(5)
    # The same report through a process whose memory is stale: answered as stored.
    again = await h.manager.report(report(job))
    assert (again.status, again.finished_at) == (JobStatus.COMPLETED,
                                                 (await h.stored(job)).finished_at)
    await refused_as(stale.report(report(job, JobStatus.FAILED)), "report_conflict",
                     job_id=job, status="COMPLETED", reported="FAILED")
    for process in (h.manager, stale):  # each now believes the store
        assert process.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0
        assert (await process.status(ALICE, job)).status is JobStatus.COMPLETED


async def test_a_report_of_a_job_whose_record_vanished_says_so(h: Harness) -> None:
    job = await h.submit()
    await h.assign()
    change_the_store_behind_its_back(h, "DELETE FROM jobs WHERE job_id = ?", job)
    await refused_as(h.manager.report(report(job, JobStatus.FAILED)), "report_conflict",
                     job_id=job, status="missing", reported="FAILED")
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0


# --- idempotency keys that cannot be looked up -------------------------------------------
async def test_a_keyed_submission_whose_key_cannot_be_looked_up_is_not_accepted(
        h: Harness) -> None:
    h.jobs.fail_on("find_by_idempotency_key")
    await refused_as(h.submit(key="K"), "submission_not_stored")
    await assert_nothing_kept(h)


async def _race_on_one_key(h: Harness, *, winner_vanishes: bool
                           ) -> tuple[JobManager, list[str | BaseException]]:
    """Two processes submit with one key at once; the loser, told the key is taken, looks
    the winner up, and that look-up fails (or finds nothing: the winner vanished)."""
    other = h.new_manager()
    release = h.jobs.gate("create")
    calls = [asyncio.create_task(m.submit(ALICE, spec(key="K"))) for m in (h.manager, other)]
    await h.jobs.held("create")
    await asyncio.sleep(0.01)
    lookup = h.jobs.gate("find_by_idempotency_key")
    if not winner_vanishes:
        h.jobs.fail_on("find_by_idempotency_key")  # the loser's look-up, the next one
    release.set()
    await h.jobs.held("find_by_idempotency_key")
    if winner_vanishes:
        [winner] = await h.records()
        change_the_store_behind_its_back(h, "DELETE FROM jobs WHERE job_id = ?", winner.job_id)
    lookup.set()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    return other, answers


async def _raise(outcome: BaseException) -> None:
    raise outcome


async def test_a_key_race_loser_that_cannot_find_the_winner_is_not_accepted(
        h: Harness) -> None:
    other, answers = await _race_on_one_key(h, winner_vanishes=False)
    [job] = [a for a in answers if isinstance(a, str)]
    [lost] = [a for a in answers if not isinstance(a, str)]
    await refused_as(_raise(lost), "submission_not_stored")
    assert h.inputs() == [f"{job}.in.proto"]  # the loser's program was removed
    assert (h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs
            + other.usage(ALICE.fingerprint, ALICE.role).live_jobs) == 1


async def test_a_key_race_loser_whose_winner_vanished_is_not_accepted(h: Harness) -> None:
    _, answers = await _race_on_one_key(h, winner_vanishes=True)
    [lost] = [a for a in answers if not isinstance(a, str)]
    await refused_as(_raise(lost), "submission_not_stored")


# --- the store fails: the caller is told, the operator is told which job and why ----------
async def _program_read_fails(h: Harness) -> tuple[Awaitable[Any], str]:
    # Recovered without its program (read at the hand-over), which cannot be read now.
    job = await h.submit()
    manager = await h.restart()
    h.payloads.fail_on("get_input")
    return manager.assign("emulator"), job


async def _cancel_fails(h: Harness) -> tuple[Awaitable[Any], str]:
    job = await h.submit()
    h.jobs.fail_on("transition")
    return h.manager.cancel(ALICE, job), job


async def _hand_over_fails(h: Harness) -> tuple[Awaitable[Any], str]:
    job = await h.submit()
    h.jobs.fail_on("transition")
    return h.manager.assign("emulator"), job


async def _report_fails(h: Harness) -> tuple[Awaitable[Any], str]:
    job = await h.submit()
    await h.assign()
    h.jobs.fail_on("transition")
    return h.manager.report(report(job, JobStatus.FAILED)), job


async def _result_check_fails(h: Harness) -> tuple[Awaitable[Any], str]:
    job = await h.submit()
    await h.assign()
    h.payloads.fail_on("result_exists")
    return h.manager.report(report(job)), job


async def _read_fails(h: Harness) -> tuple[Awaitable[Any], str]:
    job = await h.submit()
    h.jobs.fail_on("get")
    return h.new_manager().status(ALICE, job), job


@pytest.mark.parametrize("failing", [_program_read_fails, _cancel_fails, _hand_over_fails,
                                     _report_fails, _result_check_fails, _read_fails])
async def test_a_store_failure_is_answered_internal_and_logged_once_with_its_job(
        h: Harness, caplog: pytest.LogCaptureFixture,
        failing: Callable[[Harness], Awaitable[tuple[Awaitable[Any], str]]]) -> None:
    call, job = await failing(h)
    caplog.clear()
    caplog.set_level(logging.ERROR, logger="job_manager")
    await refused_as(call, "store_failed")
    [logged] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert job in logged and "injected failure" in logged, logged


async def test_a_job_is_not_found_by_someone_else_whatever_memory_holds(h: Harness) -> None:
    job = await h.submit(ALICE)
    await refused_as(h.manager.status(BOB, job), "job_not_found", job_id=job)
    await refused_as(h.manager.cancel(BOB, job), "job_not_found", job_id=job)

"""SCHEDULER_MAX_REQUEUES: a job whose node vanished (no report in time) is queued again,
in its place, at most N times; then it ends TIMEOUT as any other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from job_manager.manager import ExecutionReport
from job_manager.model import JobStatus
from message_manager import SchedulerError
from pb.mqc3_cloud.scheduler.v1 import execution_pb2
from scheduler.services.execution_service import _report
from tests.unit.test_job_rules import ALICE, Harness, report


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    harness.manager = harness.new_manager(max_requeues=2)
    yield harness
    await harness.close()


def requeued(h: Harness) -> int:
    return sum(1 for event, _ in h.events.seen if event == "requeued")


async def _lose_the_node(h: Harness) -> None:
    h.clock.advance(91)  # timeout 30 s + grace
    await h.manager.check_deadlines()


async def test_a_lost_job_is_queued_again_at_most_n_times_then_times_out(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    later = await h.submit(timeout_s=30)
    for attempt in (1, 2):
        assert (await h.assign()).record.job_id == job_id  # before the job queued after it
        await _lose_the_node(h)
        stored = await h.stored(job_id)
        assert (stored.status, stored.requeues) == (JobStatus.QUEUED, attempt)
        assert stored.dequeued_at is None
        seen = await h.manager.status(ALICE, job_id)
        assert f"queued again {attempt} times" in h.manager.status_detail(seen)
        assert requeued(h) == attempt
    assert (await h.assign()).record.job_id == job_id
    await _lose_the_node(h)
    assert (await h.stored(job_id)).status is JobStatus.TIMEOUT
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 1  # only the later job
    assert (await h.assign()).record.job_id == later


async def test_a_job_that_reports_is_never_queued_again(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    await h.complete(job_id)
    await _lose_the_node(h)
    assert (await h.stored(job_id)).status is JobStatus.COMPLETED
    assert requeued(h) == 0


async def test_off_by_default(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    try:
        job_id = await harness.submit(timeout_s=30)
        await harness.assign()
        await _lose_the_node(harness)
        assert (await harness.stored(job_id)).status is JobStatus.TIMEOUT
    finally:
        await harness.close()


def _failed(job_id: str, infrastructure: bool) -> ExecutionReport:
    return ExecutionReport(job_id=job_id, outcome=JobStatus.FAILED, detail="laser unlocked",
                           infrastructure=infrastructure)


async def test_a_job_its_backend_failed_for_its_own_reason_is_queued_again_at_most_n_times(
        h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.submit(timeout_s=30)
    for attempt in (1, 2):
        assert (await h.assign()).record.job_id == job_id  # at the head again
        answered = await h.manager.report(_failed(job_id, infrastructure=True))
        stored = await h.stored(job_id)
        assert (answered.status, stored.status, stored.requeues) == (
            JobStatus.QUEUED, JobStatus.QUEUED, attempt)
        assert "laser unlocked" in stored.status_detail
        assert f"({attempt} of 2)" in stored.status_detail
    assert (await h.assign()).record.job_id == job_id
    ended = await h.manager.report(_failed(job_id, infrastructure=True))
    assert ended.status is JobStatus.FAILED  # the third time, it ends as the node said
    assert (await h.stored(job_id)).status_detail == "laser unlocked"
    assert requeued(h) == 2


async def test_a_job_that_failed_on_its_own_merits_is_never_queued_again(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    ended = await h.manager.report(_failed(job_id, infrastructure=False))
    assert ended.status is JobStatus.FAILED
    assert (await h.stored(job_id)).requeues == 0
    assert requeued(h) == 0


def test_a_node_says_its_backend_failed_with_the_code_unavailable() -> None:
    request = execution_pb2.ReportExecutionResultRequest(
        job_id="j", status=execution_pb2.EXECUTION_STATUS_FAILURE)
    request.error.code = "UNAVAILABLE"
    assert _report(request).infrastructure
    request.error.code = "INVALID_ARGUMENT"
    assert not _report(request).infrastructure
    request.error.code = "UNAVAILABLE"
    request.status = execution_pb2.EXECUTION_STATUS_TIMEOUT
    assert not _report(request).infrastructure  # only a failure is the backend's to say


async def test_a_lost_hand_overs_upload_is_removed_when_the_job_ends(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    await h.upload_result(job_id)  # hand-over 0's node uploads, then is lost
    await _lose_the_node(h)
    await h.assign()
    await h.complete(job_id)  # hand-over 1's upload becomes the result
    await h.manager.background_done()  # the removal is no caller's to wait for
    names = sorted(p.name for p in h.local.directory.glob(f"{job_id}.*.gz"))
    assert names == [f"{job_id}.out.proto.gz"]


async def test_a_report_retried_after_its_result_was_promoted_completes_the_job(
        h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    await h.upload_result(job_id)
    h.jobs.fail_on("transition")  # the promotion is made, the COMPLETED write is not
    with pytest.raises(SchedulerError):
        await h.manager.report(report(job_id))
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    assert (await h.manager.report(report(job_id))).status is JobStatus.COMPLETED
    assert (await h.local.load_result(f"{job_id}.out.proto.gz")) is not None

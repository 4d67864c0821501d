"""The hand-over phase (job_manager/phases/handover.py): which hand-over a report, an upload
URL or a heartbeat may speak for, word for word; a result that cannot be kept; and the
changes a report or a give-back must wait for, or look again after (docs/job-rules.md,
rules 2, 6, 10 and 19).

Driven over tests/unit/test_job_rules.py's Harness with jobs queued again at most twice
(tests/unit/test_requeue.py's fixture); each test was seen failing on the mutants it was
written for (docs/mutation.md, "Issue 29: the phases").
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from job_manager.manager import ExecutionReport
from job_manager.model import BackendTimestamps, JobStatus
from job_manager.phases.core import UPLOAD_URL_LIFETIME
from job_manager.stores.payload_store import handover_result_key
from tests.helpers import refused_as
from tests.unit.test_job_rules import Harness, report
from tests.unit.test_requeue import h

__all__ = ["h"]  # the fixture of test_requeue: a harness that queues lost jobs twice

NODE = "lab-1"


async def lose_the_node(h: Harness) -> None:
    h.clock.advance(91)  # timeout 30 s + grace
    await h.manager.check_deadlines()


async def handed_over_again(h: Harness, node: str = NODE) -> str:
    """A job whose first hand-over was lost, RUNNING in its second (hand-over 1)."""
    job_id = await h.submit(timeout_s=30)
    await h.manager.assign("emulator", node=node)
    await lose_the_node(h)
    h.clock.advance(5)
    assignment = await h.manager.assign("emulator", node=node)
    assert assignment is not None and assignment.record.requeues == 1
    return job_id


def begun_at(job_id: str, started: object, handover: int | None = None) -> ExecutionReport:
    stamps = BackendTimestamps(execution_started_at=started)  # type: ignore[arg-type]
    return ExecutionReport(job_id=job_id, outcome=JobStatus.FAILED, timestamps=stamps,
                           handover=handover)


# --- which hand-over speaks ----------------------------------------------------------------
async def test_a_report_naming_an_earlier_hand_over_is_refused_saying_which(
        h: Harness) -> None:
    job_id = await handed_over_again(h)
    earlier = ExecutionReport(job_id=job_id, outcome=JobStatus.FAILED, handover=0)
    await refused_as(h.manager.report(earlier, NODE), "report_of_earlier_hand_over",
                     job_id=job_id, detail="handed over again since: this report names "
                                           "hand-over 0, the job's is 1")
    current = ExecutionReport(job_id=job_id, outcome=JobStatus.FAILED, handover=1)
    assert (await h.manager.report(current, NODE)).status is JobStatus.FAILED


async def test_a_report_whose_run_began_before_the_current_hand_over_is_refused(
        h: Harness) -> None:
    job_id = await handed_over_again(h)
    handed = (await h.stored(job_id)).dequeued_at
    assert handed is not None
    before = handed - timedelta(milliseconds=1)
    await refused_as(h.manager.report(begun_at(job_id, before), NODE),
                     "report_of_earlier_hand_over", job_id=job_id,
                     detail="handed over again since: the reported run began before the "
                            "job's current hand-over")
    # A run that began at the hand-over's instant is the current hand-over's.
    assert (await h.manager.report(begun_at(job_id, handed), NODE)).status is JobStatus.FAILED


async def test_a_report_for_a_job_queued_again_says_why_it_was(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    await lose_the_node(h)
    await refused_as(h.manager.report(report(job_id)), "report_of_earlier_hand_over",
                     job_id=job_id, detail="queued again: its node never reported (1 of 2)")


async def test_a_backend_failure_without_words_is_queued_again_as_unstated(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    failed = ExecutionReport(job_id=job_id, outcome=JobStatus.FAILED, infrastructure=True)
    queued = await h.manager.report(failed)
    assert queued.status_detail == ("queued again: its backend failed it for a reason of its "
                                    "own (unstated) (1 of 2)")


async def test_an_upload_url_is_for_the_current_hand_overs_own_key(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    assignment = await h.assign()
    assert assignment.upload == h.payloads.upload_url(job_id, UPLOAD_URL_LIFETIME, 0)
    assert h.manager.accepts_result(job_id, 0) and not h.manager.accepts_result(job_id)
    await lose_the_node(h)
    assignment = await h.assign()
    assert assignment.upload == h.payloads.upload_url(job_id, UPLOAD_URL_LIFETIME, 1)
    assert await h.manager.refresh_upload_url(job_id) == assignment.upload


async def test_renewals_and_beats_naming_an_earlier_hand_over_are_refused_saying_which(
        h: Harness) -> None:
    job_id = await handed_over_again(h)
    for call in (h.manager.refresh_upload_url(job_id, NODE, handover=0),
                 h.manager.heartbeat(job_id, NODE, handover=0)):
        await refused_as(call, "earlier_hand_over", job_id=job_id, sent=0, current=1)
    assert await h.manager.refresh_upload_url(job_id, NODE, handover=1) == (
        h.payloads.upload_url(job_id, UPLOAD_URL_LIFETIME, 1))
    assert await h.manager.heartbeat(job_id, NODE, handover=1) > 0


# --- a result that cannot be kept -------------------------------------------------------
async def test_a_result_whose_promotion_failed_is_not_completed_and_the_log_says_why(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    await h.upload_result(job_id)
    h.payloads.fail_on("promote_result")
    await refused_as(h.manager.report(report(job_id)), "store_failed")
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line == (f"result of job {job_id} could not be kept: the store failed: "
                    "payloads.promote_result: injected failure (before the call)")
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    assert (await h.manager.report(report(job_id))).status is JobStatus.COMPLETED


async def test_a_result_gone_before_its_promotion_is_missing(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    await h.upload_result(job_id)
    release = h.payloads.gate("promote_result")
    reporting = asyncio.ensure_future(h.manager.report(report(job_id)))
    await h.payloads.held("promote_result")
    (h.local.directory / handover_result_key(job_id, 0)).unlink()  # housekeeping took it
    release.set()
    await refused_as(reporting, "result_missing", job_id=job_id)
    assert (await h.stored(job_id)).status is JobStatus.RUNNING


# --- changes a report or a give-back waits for, or looks again after ---------------------
async def test_a_report_read_before_a_requeue_began_looks_again_after_it(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    await h.upload_result(job_id)
    checked = h.payloads.gate("result_exists")
    reporting = asyncio.ensure_future(h.manager.report(report(job_id)))
    await h.payloads.held("result_exists")
    written = h.jobs.gate("transition")
    h.clock.advance(91)
    watchdog = asyncio.ensure_future(h.manager.check_deadlines())
    await h.jobs.held("transition")  # the requeue is under way ...
    checked.set()  # ... when the report has read the job
    await asyncio.sleep(0.01)
    written.set()
    await watchdog
    await refused_as(reporting, "report_of_earlier_hand_over", job_id=job_id,
                     detail="queued again: its node never reported (1 of 2)")
    assert h.jobs.calls["transition"] == 2  # the hand-over, the requeue: the report wrote none
    assert (await h.stored(job_id)).requeues == 1


async def test_a_report_read_before_its_job_was_handed_over_again_looks_again(
        h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.manager.assign("emulator", node=NODE)
    await h.upload_result(job_id)
    checked = h.payloads.gate("result_exists")
    reporting = asyncio.ensure_future(h.manager.report(report(job_id), NODE))
    await h.payloads.held("result_exists")
    await lose_the_node(h)  # meanwhile lost, queued again and handed to another node
    assert await h.manager.assign("emulator", node="lab-2") is not None
    checked.set()
    await refused_as(reporting, "job_held_by_another_node", job_id=job_id)
    stored = await h.stored(job_id)
    assert (stored.status, stored.requeues, stored.node_identity) == (
        JobStatus.RUNNING, 1, "lab-2")


async def test_a_give_back_during_a_report_waits_for_it_and_changes_nothing(
        h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    assignment = await h.assign()
    await h.upload_result(job_id)
    written = h.jobs.gate("transition")
    reporting = asyncio.ensure_future(h.manager.report(report(job_id)))
    await h.jobs.held("transition")
    h.manager.give_back(assignment)  # the node's call ends as it reports
    await asyncio.sleep(0.01)
    written.set()
    assert (await reporting).status is JobStatus.COMPLETED
    await h.manager.background_done()
    assert h.jobs.calls["transition"] == 2  # the hand-over, the report: no give-back
    assert (await h.stored(job_id)).status is JobStatus.COMPLETED


async def test_memory_holds_a_job_given_back_as_the_store_does(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    h.manager.give_back(await h.manager.assign("emulator", node=NODE) or pytest.fail())
    await h.manager.background_done()
    stored = await h.stored(job_id)
    assert (stored.status, stored.node_identity, stored.dequeued_at) == (
        JobStatus.QUEUED, "", None)
    assert h.manager.live(job_id) == stored

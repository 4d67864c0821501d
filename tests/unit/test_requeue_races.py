"""A requeue racing a report, or another requeue, strands nothing (issue 27, item 1;
docs/job-rules.md, rules 2 and 3).

The store's compare-and-set is held at a gate so that the two changes meet: whichever
reaches the store first wins, and the other one, once it sees that, neither takes the job
out of the queue the winner put it in nor counts its bytes twice.
"""

from __future__ import annotations

import asyncio

import pytest

from job_manager.manager import ExecutionReport
from job_manager.model import JobStatus
from job_manager.phases.core import READ_AGAIN_S
from message_manager import SchedulerError
from tests.unit.test_job_rules import ALICE, Harness
from tests.unit.test_requeue import h

__all__ = ["h"]  # the fixture of test_requeue: a harness that queues lost jobs twice


def _failed(job_id: str, infrastructure: bool = False) -> ExecutionReport:
    return ExecutionReport(job_id=job_id, outcome=JobStatus.FAILED, detail="laser unlocked",
                           infrastructure=infrastructure)


async def _queued_once_more_and_served(h: Harness, job_id: str) -> None:
    stored = await h.stored(job_id)
    assert (stored.status, stored.requeues) == (JobStatus.QUEUED, 1)
    assert h.manager.queue_length("emulator") == 1  # in its queue, not only in the store
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 1
    assignment = await h.assign()
    assert assignment.record.job_id == job_id  # a node gets it again
    await h.complete(job_id)
    assert (await h.stored(job_id)).status is JobStatus.COMPLETED
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0


async def test_a_late_report_behind_the_watchdogs_requeue_strands_nothing(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    opened = h.jobs.gate("transition")
    h.clock.advance(91)  # the node never reported: the watchdog queues the job again
    watchdog = asyncio.ensure_future(h.manager.check_deadlines())
    await h.jobs.held("transition")
    late = asyncio.ensure_future(h.manager.report(_failed(job_id)))  # ... as its report comes
    await asyncio.sleep(0.01)
    opened.set()
    await watchdog
    with pytest.raises(SchedulerError) as refused:
        await late
    assert refused.value.key == "report_of_earlier_hand_over"
    assert "queued again" in str(refused.value)
    await _queued_once_more_and_served(h, job_id)


async def test_two_requeues_of_one_job_count_it_once(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    opened = h.jobs.gate("transition")
    first = asyncio.ensure_future(h.manager.report(_failed(job_id, infrastructure=True)))
    await h.jobs.held("transition")
    retried = asyncio.ensure_future(h.manager.report(_failed(job_id, infrastructure=True)))
    h.clock.advance(91)
    watchdog = asyncio.ensure_future(h.manager.check_deadlines())
    await asyncio.sleep(0.01)
    opened.set()
    assert (await first).status is JobStatus.QUEUED
    await watchdog
    with pytest.raises(SchedulerError) as refused:
        await retried
    assert refused.value.key == "report_of_earlier_hand_over"
    await _queued_once_more_and_served(h, job_id)


async def test_a_failed_read_after_a_failed_compare_and_set_leaves_nothing_claimed(
        h: Harness) -> None:
    # Issue 27, item 4: the read that follows a compare-and-set that found the store
    # changed (another process handed the job over) fails too.
    job_id = await h.submit(timeout_s=30)
    other = h.new_manager()
    await other.recover()
    assert (await other.assign("emulator")) is not None  # RUNNING in the store, not here
    h.jobs.fail_on("get")
    with pytest.raises(SchedulerError):
        await h.manager.assign("emulator")
    assert h.manager.live_jobs() == 0  # not claimed for ever
    for _ in range(40):  # read again once the store answers: watched here from then on
        await asyncio.sleep(0.05)
        if h.manager.live_jobs():
            break
    assert h.manager.live(job_id) is not None
    h.clock.advance(91)
    await h.manager.check_deadlines()
    assert (await h.stored(job_id)).status is JobStatus.QUEUED  # lost, queued again


async def test_a_repeated_report_of_a_final_job_changes_nothing(h: Harness) -> None:
    # The same report twice is answered OK (rule 6) and writes nothing: a node retrying
    # its UNAVAILABLE report after its job ended FAILED must not queue the job again.
    job_id = await h.submit(timeout_s=30)
    for _ in range(3):  # two requeues, then the third failure ends it
        await h.assign()
        await h.manager.report(_failed(job_id, infrastructure=True))
    ended = await h.stored(job_id)
    assert ended.status is JobStatus.FAILED
    h.clock.advance(5)
    answered = await h.manager.report(_failed(job_id, infrastructure=True))
    assert answered.status is JobStatus.FAILED
    assert await h.stored(job_id) == ended  # not rewritten, not queued again
    finished = [event for event, _ in h.events.seen if event == "finished"]
    assert len(finished) == 1


async def test_a_manager_shut_down_reads_again_no_more(h: Harness) -> None:
    # A job whose store read failed is read again until the store answers, but not by a
    # manager whose term is over: it would admit the job into a ledger nobody serves.
    job_id = await h.submit(timeout_s=30)
    other = h.new_manager()
    await other.recover()
    assert (await other.assign("emulator")) is not None
    h.jobs.fail_on("get")
    with pytest.raises(SchedulerError):
        await h.manager.assign("emulator")
    h.manager.shutdown()
    await asyncio.sleep(3 * READ_AGAIN_S)
    assert h.manager.live(job_id) is None

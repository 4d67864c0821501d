"""The core every phase shares (job_manager/phases/core.py): what memory does when the store
disagrees with it, reads made as the user they are for, the uploads of lost hand-overs
removed when a job ends, and the work no caller waits for (docs/job-rules.md).

Driven over tests/unit/test_job_rules.py's Harness; each test was seen failing on the
mutants it was written for (docs/mutation.md, "Issue 29: the phases").
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import pytest

from common.caller import VIEWER
from common.identity import Principal
from job_manager.model import JobStatus
from job_manager.phases import core
from message_manager import SchedulerError
from tests.helpers import refused_as
from tests.unit.test_hang_ups import eventually
from tests.unit.test_job_rules import ALICE, BOB, GRACE_S, Harness, h, report

__all__ = ["h"]  # the fixture, shared with test_job_rules


async def ended_elsewhere(h: Harness, job_id: str, status: JobStatus) -> None:
    """Another process moves the RUNNING job to ``status``, unknown to this one's memory."""
    running = await h.stored(job_id)
    changed = replace(running, status=status, dequeued_at=None, node_identity="")
    if status.is_final:
        changed = replace(running, status=status, finished_at=h.clock.now())
    assert await h.jobs.inner.transition(running, changed)


# --- the store disagrees ------------------------------------------------------------------
async def stale_report(h: Harness, others_queued: int) -> str:
    """A report for a job memory holds RUNNING, which another process gave back meanwhile
    (``others_queued`` other jobs wait in its queue); it is refused as the store says."""
    job_id = await h.submit()
    await h.assign()
    for _ in range(others_queued):
        await h.submit(program=b"other")
    await h.upload_result(job_id)
    await ended_elsewhere(h, job_id, JobStatus.QUEUED)
    await refused_as(h.manager.report(report(job_id)), "report_conflict", job_id=job_id,
                     status="QUEUED", reported="COMPLETED")
    return job_id


async def test_a_job_the_store_holds_queued_again_is_queued_here_and_counted(
        h: Harness) -> None:
    job_id = await stale_report(h, others_queued=1)
    assert h.manager.live(job_id) == await h.stored(job_id)
    assert h.manager.queue_length("emulator") == 2
    usage = h.manager.usage(ALICE.fingerprint, ALICE.role)
    assert (usage.live_jobs, usage.queued_bytes) == (2, len(b"program") + len(b"other"))


async def test_a_job_the_store_holds_queued_again_is_queued_here_when_its_queue_is_empty(
        h: Harness) -> None:
    job_id = await stale_report(h, others_queued=0)
    assert h.manager.live(job_id) == await h.stored(job_id)
    assert (await h.assign()).record.job_id == job_id


async def test_a_job_the_store_holds_ended_is_queued_nowhere(h: Harness) -> None:
    job_id = await h.submit()
    await h.assign()
    other = await h.submit(program=b"other")
    await ended_elsewhere(h, job_id, JobStatus.COMPLETED)
    failed = replace(report(job_id), outcome=JobStatus.FAILED)
    await refused_as(h.manager.report(failed), "report_conflict", job_id=job_id,
                     status="COMPLETED", reported="FAILED")
    assert h.manager.queue_length("emulator") == h.manager.live_jobs() == 1
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 1
    assert (await h.assign()).record.job_id == other
    assert await h.manager.assign("emulator") is None


async def test_a_job_whose_reads_failed_twice_is_read_until_the_store_answers(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "READ_AGAIN_S", 0.01)
    job_id = await h.submit()
    other = h.new_manager()
    await other.recover()
    assert await other.assign("emulator") is not None  # RUNNING in the store, not here
    h.jobs.fail_on("get", times=2)  # the read after the failed hand-over, and one again
    with pytest.raises(SchedulerError):
        await h.manager.assign("emulator")

    async def watched() -> bool:
        return h.manager.live(job_id) is not None

    await eventually(watched)
    assert h.jobs.calls["get"] >= 3
    h.clock.advance(30 + GRACE_S)
    await h.manager.check_deadlines()
    assert (await h.stored(job_id)).status is JobStatus.TIMEOUT  # watched here from then on


# --- reads made as the user they are for ------------------------------------------------------
async def test_a_read_of_anothers_job_is_made_as_the_reader(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Principal | None] = []
    get = h.jobs.get

    async def viewed_get(job_id: str) -> object:
        seen.append(VIEWER.get())
        return await get(job_id)

    monkeypatch.setattr(h.jobs, "get", viewed_get)
    held_here = await h.submit()
    await refused_as(h.manager.status(BOB, held_here), "job_not_found", job_id=held_here)
    h.manager.shutdown()
    h.manager = h.new_manager()  # a job this manager's memory does not hold
    await refused_as(h.manager.status(BOB, held_here), "job_not_found", job_id=held_here)
    assert seen == [BOB, BOB]


# --- lost hand-overs' uploads --------------------------------------------------------------
class Discards:
    """Which hand-overs' uploads a job's end had removed."""

    def __init__(self, h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        self.asked: list[list[int]] = []
        discard = h.payloads.discard_results

        async def recorded(job_id: str, handovers: Sequence[int]) -> None:
            self.asked.append(list(handovers))
            await discard(job_id, handovers)

        monkeypatch.setattr(h.payloads, "discard_results", recorded)


async def lost_once(h: Harness) -> str:
    """A job whose first hand-over was lost: QUEUED again."""
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    h.clock.advance(30 + GRACE_S)
    await h.manager.check_deadlines()
    return job_id


@pytest.mark.parametrize(("outcome", "removed"), [
    (JobStatus.COMPLETED, [[0]]),  # the last hand-over's upload became the result
    (JobStatus.FAILED, [[0, 1]]),  # the last one's upload is no result
])
async def test_a_job_ended_on_its_second_hand_over_removes_what_was_no_result(
        h: Harness, monkeypatch: pytest.MonkeyPatch, outcome: JobStatus,
        removed: list[list[int]]) -> None:
    h.manager = h.new_manager(max_requeues=2)
    discards = Discards(h, monkeypatch)
    job_id = await lost_once(h)
    await h.assign()
    await h.upload_result(job_id)
    await h.manager.report(replace(report(job_id), outcome=outcome))
    await h.manager.background_done()
    assert discards.asked == removed


async def test_a_job_cancelled_after_a_lost_hand_over_removes_that_ones_upload(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    h.manager = h.new_manager(max_requeues=2)
    discards = Discards(h, monkeypatch)
    job_id = await lost_once(h)
    await h.manager.cancel(ALICE, job_id)
    await h.manager.background_done()
    assert discards.asked == [[0]]


async def test_a_job_completed_on_its_first_hand_over_removes_nothing(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    h.manager = h.new_manager(max_requeues=2)
    discards = Discards(h, monkeypatch)
    job_id = await h.submit()
    await h.assign()
    await h.complete(job_id)
    await h.manager.background_done()
    assert discards.asked == []


# --- work no caller waits for -------------------------------------------------------------------
async def test_waiting_for_the_background_work_stops_at_its_time_limit(h: Harness) -> None:
    await h.submit()
    assignment = await h.assign()
    release = h.jobs.gate("transition")
    h.manager.give_back(assignment)  # its write hangs
    await h.jobs.held("transition")
    await asyncio.wait_for(h.manager.background_done(0.05), 1.0)
    release.set()
    await h.manager.background_done()

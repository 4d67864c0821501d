"""The liveness phase (job_manager/phases/liveness.py): what a passed deadline or a stopped
heartbeat does to a job, word for word; a requeue the store failed or refused; a timeout
that meets a report; and what a backend's status says of its nodes (docs/nodes.md;
docs/job-rules.md, rules 5 and 17).

Driven over tests/unit/test_job_rules.py's Harness, with tests/unit/test_nodes.py's
helpers for heartbeats; each test was seen failing on the mutants it was written for
(docs/mutation.md, "Issue 29: the phases").
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest

from backend_manager import ServiceStatus
from backend_manager.status import parse_backend_table
from job_manager.manager import ExecutionReport
from job_manager.model import JobStatus
from tests.helpers import refused_as
from tests.unit.test_job_rules import ALICE, BACKENDS, EMULATOR_ONLY, GRACE_S, Harness, h, report
from tests.unit.test_nodes import BEAT_TIMEOUT_S, beating, later, taken

__all__ = ["h"]  # the fixture, shared with test_job_rules

DESCRIBED = """
[backends.emulator.developer]
status = "available"
description = "simulated on CPUs"
[backends.qpu.developer]
status = "available"
"""


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def first_beats_logged(caplog: pytest.LogCaptureFixture, job_id: str) -> int:
    return sum(1 for r in caplog.records
               if r.getMessage() == f"job {job_id}: its node sends heartbeats (lost after "
                                    f"{BEAT_TIMEOUT_S:g} s without one)")


# --- heartbeats that stop -------------------------------------------------------------------
async def test_a_job_whose_beats_stopped_is_queued_again_then_timed_out_saying_why(
        h: Harness) -> None:
    manager = beating(h, max_requeues=1)
    job_id = await taken(h)
    await manager.heartbeat(job_id, "lab-1")
    await later(h, BEAT_TIMEOUT_S)
    assert (await h.stored(job_id)).status_detail == (
        "queued again: its node stopped sending heartbeats (10 s without one) (1 of 1)")
    await manager.assign("emulator", node="lab-1")
    await manager.heartbeat(job_id, "lab-1")
    await later(h, BEAT_TIMEOUT_S)
    stored = await h.stored(job_id)
    assert (stored.status, stored.status_detail) == (
        JobStatus.TIMEOUT, "the backend stopped sending heartbeats (10 s without one, "
                           "SCHEDULER_HEARTBEAT_TIMEOUT_S)")


async def test_the_first_beat_of_each_hand_over_is_logged_once(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="job_manager")
    manager = beating(h, max_requeues=1)
    job_id = await taken(h)
    await manager.heartbeat(job_id, "lab-1")
    await manager.heartbeat(job_id, "lab-1")
    assert first_beats_logged(caplog, job_id) == 1
    await later(h, BEAT_TIMEOUT_S)  # the beats stop: queued again, its beat dealt with
    await manager.assign("emulator", node="lab-2")
    await manager.heartbeat(job_id, "lab-2")
    assert first_beats_logged(caplog, job_id) == 2


async def test_a_beat_of_an_earlier_hand_over_never_loses_the_current_one(h: Harness) -> None:
    manager = beating(h, max_requeues=2)
    job_id = await taken(h)
    await manager.heartbeat(job_id, "lab-1")
    failed = ExecutionReport(job_id=job_id, outcome=JobStatus.FAILED, infrastructure=True)
    await manager.report(failed, "lab-1")  # queued again by its node's word
    await later(h, 1)
    await manager.assign("emulator", node="lab-2")  # the new node has not beaten yet
    await later(h, BEAT_TIMEOUT_S)  # the earlier hand-over's beat deadline passes
    stored = await h.stored(job_id)
    assert (stored.status, stored.requeues, stored.node_identity) == (
        JobStatus.RUNNING, 1, "lab-2")


async def test_the_beat_of_a_job_that_ended_leaves_nothing_behind(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    manager = beating(h)
    job_id = await taken(h)
    await manager.heartbeat(job_id, "lab-1")
    await h.complete(job_id, "lab-1")
    await later(h, BEAT_TIMEOUT_S + 1)
    assert errors(caplog) == []
    assert manager.deadlines_watched() == 1  # only the job's own deadline, skipped when due


# --- requeues the store failed or refused ----------------------------------------------------
async def test_a_requeue_the_store_failed_is_tried_again_one_grace_later(h: Harness) -> None:
    h.manager = h.new_manager(max_requeues=2)
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    h.jobs.fail_on("transition")
    await later(h, 30 + GRACE_S)
    assert (await h.stored(job_id)).status is JobStatus.RUNNING  # still watched
    await later(h, GRACE_S - 1)
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    await later(h, 1)
    stored = await h.stored(job_id)
    assert (stored.status, stored.requeues) == (JobStatus.QUEUED, 1)


async def test_a_requeue_that_finds_the_job_ended_elsewhere_forgets_it(h: Harness) -> None:
    h.manager = h.new_manager(max_requeues=2)
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    running = await h.stored(job_id)  # another process completes it, unknown to memory
    done = replace(running, status=JobStatus.COMPLETED, finished_at=h.clock.now())
    assert await h.jobs.inner.transition(running, done)
    await later(h, 30 + GRACE_S)
    assert h.manager.live_jobs() == 0
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0
    assert await h.status(job_id) is JobStatus.COMPLETED


async def test_memory_holds_a_requeued_job_as_the_store_does(h: Harness) -> None:
    h.manager = h.new_manager(max_requeues=2)
    job_id = await h.submit(timeout_s=30)
    await h.manager.assign("emulator", node="lab-1")
    await later(h, 30 + GRACE_S)
    stored = await h.stored(job_id)
    assert (stored.node_identity, stored.actual_backend, stored.dequeued_at) == ("", "", None)
    assert h.manager.live(job_id) == stored


# --- a timeout that meets a report ---------------------------------------------------------------
async def test_a_report_during_a_timeout_waits_for_it_and_writes_nothing(h: Harness) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    await h.upload_result(job_id)
    written = h.jobs.gate("transition")
    h.clock.advance(30 + GRACE_S)
    watchdog = asyncio.ensure_future(h.manager.check_deadlines())
    await h.jobs.held("transition")
    reporting = asyncio.ensure_future(h.manager.report(report(job_id)))
    await asyncio.sleep(0.01)
    written.set()
    await watchdog
    await refused_as(reporting, "report_conflict", job_id=job_id, status="TIMEOUT",
                     reported="COMPLETED")
    assert h.jobs.calls["transition"] == 2  # the hand-over, the timeout


async def test_a_timeout_that_lost_to_a_report_elsewhere_leaves_nothing_to_retry(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    written = h.jobs.gate("transition")
    h.clock.advance(30 + GRACE_S)
    watchdog = asyncio.ensure_future(h.manager.check_deadlines())
    await h.jobs.held("transition")
    running = await h.stored(job_id)  # another process records the node's report first
    done = replace(running, status=JobStatus.COMPLETED, finished_at=h.clock.now())
    assert await h.jobs.inner.transition(running, done)
    written.set()
    assert await watchdog == 1
    assert errors(caplog) == []
    assert h.manager.deadlines_watched() == 0
    assert await h.status(job_id) is JobStatus.COMPLETED


# --- what a status says of the nodes ---------------------------------------------------
async def test_a_quiet_backends_note_follows_its_description(h: Harness) -> None:
    h.manager = h.new_manager(DESCRIBED)
    h.clock.advance(3600)
    _, note = h.manager.service_status("qpu", ALICE)
    assert note.startswith("no node has asked for work for ")
    assert h.manager.service_status("emulator", ALICE) == (
        ServiceStatus.AVAILABLE, f"simulated on CPUs; {note}")


async def test_a_name_a_node_asked_before_it_named_a_backend_was_not_remembered(
        h: Harness) -> None:
    # With one shared queue a node may ask under any name; only backends are watched, so
    # made-up names cannot grow memory (the earlier run held this by reading the manager's
    # node table, private since the split).
    h.manager = h.new_manager(EMULATOR_ONLY, unify_backends=True)
    h.clock.advance(100)
    assert await h.manager.assign("qpu") is None  # not a backend yet
    h.clock.advance(300)
    h.manager.use_backends(parse_backend_table(BACKENDS))
    assert dict(h.manager.node_snapshot())["qpu"] == 400  # quiet since the start

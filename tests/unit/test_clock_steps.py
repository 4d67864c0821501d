"""Time that cannot jump: a step of the wall clock never times a running job out, nor
keeps it running for ever; a node's timestamps never make a negative duration.

The watchdog keeps deadlines on the monotonic clock (job_manager/watchdog.py); the wall
clock is read only when a job is watched. A node's timestamps outside the job's run
(before its hand-over, or in the future) are clamped into it and counted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from job_manager.manager import ExecutionReport
from job_manager.model import BackendTimestamps, JobStatus
from tests.unit.test_job_rules import GRACE_S, Harness

TIMEOUT_S = 30


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    await harness.close()


@pytest.mark.parametrize("step_s", [3600, -3600])
async def test_a_wall_clock_step_neither_times_a_job_out_nor_lets_it_run_on(
        h: Harness, step_s: float) -> None:
    job_id = await h.submit(timeout_s=TIMEOUT_S)
    await h.assign()
    h.clock.step_wall(step_s)  # an hour forward, or back, in an instant
    assert await h.manager.check_deadlines() == 0
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    h.clock.advance(TIMEOUT_S + GRACE_S - 1)
    await h.manager.check_deadlines()
    assert (await h.stored(job_id)).status is JobStatus.RUNNING  # a second before its time
    h.clock.advance(1)
    await h.manager.check_deadlines()
    assert (await h.stored(job_id)).status is JobStatus.TIMEOUT  # on time, as measured


async def test_node_timestamps_outside_the_run_are_clamped_into_it_and_counted(
        h: Harness) -> None:
    job_id = await h.submit(timeout_s=TIMEOUT_S)
    running = (await h.assign()).record
    assert running.dequeued_at is not None
    h.clock.advance(10)
    before = running.dequeued_at - timedelta(hours=1)  # a node clock an hour behind
    inside = running.dequeued_at + timedelta(seconds=5)
    future = h.clock.now() + timedelta(days=1)  # one a day ahead
    await h.upload_result(job_id)
    stamps = BackendTimestamps(compile_started_at=before, compile_finished_at=inside,
                               execution_started_at=inside, execution_finished_at=future)
    done = await h.manager.report(ExecutionReport(job_id, JobStatus.COMPLETED,
                                                  timestamps=stamps))
    stored = (await h.stored(job_id)).backend_timestamps
    assert stored == done.backend_timestamps == BackendTimestamps(
        compile_started_at=running.dequeued_at, compile_finished_at=inside,
        execution_started_at=inside, execution_finished_at=h.clock.now())
    assert h.events.seen.count(("clamped", job_id)) == 2


async def test_node_timestamps_within_the_run_are_kept_as_sent(h: Harness) -> None:
    job_id = await h.submit(timeout_s=TIMEOUT_S)
    running = (await h.assign()).record
    assert running.dequeued_at is not None
    h.clock.advance(10)
    await h.upload_result(job_id)
    stamps = BackendTimestamps(compile_started_at=running.dequeued_at,
                               execution_finished_at=h.clock.now())
    await h.manager.report(ExecutionReport(job_id, JobStatus.COMPLETED, timestamps=stamps))
    assert (await h.stored(job_id)).backend_timestamps == stamps
    assert ("clamped", job_id) not in h.events.seen

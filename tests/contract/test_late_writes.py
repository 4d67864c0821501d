"""A deposed leader's late hand-over or report, and the new leader's sweep that finds it.

The two writes of every job's life go out without the fence item (docs/replicas.md,
"Fence"). One that a deposed leader sent just before its lease lapsed can land after the
new term read the store, on a job the new term has not written yet; the new leader's
sweep (job_manager/phases/liveness.py) finds it and memory follows the store. Two
managers share one moto table here: ``old`` at epoch 1, whose writes land as if sent
before its lease lapsed, and ``new`` at epoch 2, recovered after the takeover.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from job_manager.manager import ExecutionReport, JobManager
from job_manager.model import JobStatus
from job_manager.stores import Deposed, Fence
from job_manager.stores.dynamodb_job_store import DynamoDbJobStore, create_table
from job_manager.stores.local_payload_store import LocalPayloadStore
from tests.faults import FlakyJobStore, FlakyPayloadStore
from tests.helpers import aws_client
from tests.unit.test_job_rules import ALICE, Harness
from tests.unit.test_manager_paths import until

OLD, NEW = Fence("a", 1), Fence("b", 2)


class TwoTerms(Harness):
    """One moto table, one payload directory, and a manager per term."""

    table = ""
    endpoint = ""

    def _open_stores(self) -> tuple[FlakyJobStore, FlakyPayloadStore]:
        jobs = FlakyJobStore(DynamoDbJobStore(aws_client("dynamodb", self.endpoint),
                                              self.table))
        payloads = FlakyPayloadStore(LocalPayloadStore(
            self.directory / "payloads", self.signer, "http://127.0.0.1:1", self.clock))
        return jobs, payloads

    async def take_over(self) -> JobManager:
        """The new term: its fence raised, the store read."""
        new = self.new_manager(fence=NEW)
        await new.recover()
        return new


@pytest.fixture
async def terms(tmp_path: Path, dynamodb_endpoint: str) -> AsyncIterator[TwoTerms]:
    TwoTerms.endpoint = dynamodb_endpoint
    TwoTerms.table = f"jobs-{uuid.uuid4().hex[:12]}"
    create_table(aws_client("dynamodb", dynamodb_endpoint), TwoTerms.table)
    harness = TwoTerms(tmp_path)
    harness.manager.shutdown()
    harness.manager = harness.new_manager(fence=OLD)  # the old term's manager
    await harness.manager.recover()
    yield harness
    await harness.close()


async def test_a_late_hand_over_is_found_and_the_job_is_not_handed_over_twice(
        terms: TwoTerms) -> None:
    old = terms.manager
    job = await terms.submit()
    new = await terms.take_over()
    assert new.queue_length("emulator") == 1

    late = await old.assign("emulator")  # sent before the lapse, landing now
    assert late is not None and late.record.job_id == job
    reads = terms.jobs.calls["get"]
    assert await new.sweep_late_writes() == 1
    assert terms.jobs.calls["get"] - reads == 2  # the check, then memory follows the store
    held = new.live(job)
    assert held is not None and held.status is JobStatus.RUNNING
    assert new.queue_length("emulator") == 0
    assert await new.assign("emulator") is None  # not handed over a second time

    # The node's report, passed to the new leader, ends it there; the old term is out.
    await terms.upload_result(job)
    done = await new.report(ExecutionReport(job, JobStatus.COMPLETED))
    assert done.status is JobStatus.COMPLETED
    assert (await terms.stored(job)).status is JobStatus.COMPLETED
    assert await new.sweep_late_writes() == 0
    new.shutdown()


async def test_a_late_report_of_a_job_running_at_the_takeover_is_found(
        terms: TwoTerms) -> None:
    old = terms.manager
    job = await terms.submit()
    await terms.assign()
    await terms.upload_result(job)
    new = await terms.take_over()
    assert new.live(job) is not None
    assert await new.sweep_late_writes() == 0  # the first sweep only looks

    await old.report(ExecutionReport(job, JobStatus.COMPLETED))  # landing late
    assert await new.sweep_late_writes() == 1
    assert new.live(job) is None
    assert (await new.status(ALICE, job)).status is JobStatus.COMPLETED
    new.shutdown()


async def test_once_the_new_term_wrote_a_job_the_old_terms_write_is_refused(
        terms: TwoTerms) -> None:
    old = terms.manager
    job = await terms.submit()
    new = await terms.take_over()
    handed = await new.assign("emulator")
    assert handed is not None
    with pytest.raises(Deposed):
        await old.assign("emulator")
    stored = await terms.stored(job)
    assert stored.status is JobStatus.RUNNING and stored.dequeued_at == handed.record.dequeued_at
    assert await new.sweep_late_writes() == 0
    new.shutdown()


async def test_with_nothing_written_late_a_sweep_reads_no_job(terms: TwoTerms) -> None:
    jobs = [await terms.submit() for _ in range(3)]
    new = await terms.take_over()
    await new.assign("emulator")
    for _ in range(2):
        reads = terms.jobs.calls["get"]
        assert await new.sweep_late_writes() == 0
        assert terms.jobs.calls["get"] == reads  # one listing of the RUNNING jobs, no read
    assert new.queue_length("emulator") == len(jobs) - 1
    new.shutdown()


async def test_a_follower_never_sweeps(terms: TwoTerms) -> None:
    await terms.submit()
    follower = terms.new_manager(fence=Fence("c", 0))
    listings = terms.jobs.calls["list_by_status"]
    assert await follower.sweep_late_writes() == 0
    assert terms.jobs.calls["list_by_status"] == listings
    follower.shutdown()


async def test_the_new_leaders_watch_sweeps_from_its_first_round(terms: TwoTerms) -> None:
    old = terms.manager
    job = await terms.submit()
    new = await terms.take_over()
    await old.assign("emulator")
    watch = asyncio.create_task(new.watch_deadlines())
    try:
        await until(lambda: (held := new.live(job)) is not None
                    and held.status is JobStatus.RUNNING)
        assert new.queue_length("emulator") == 0
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        new.shutdown()

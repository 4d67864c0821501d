"""A deposed leader's manager changes no job (docs/replicas.md): every write of each path
carries the manager's fence, and a submission refused by it keeps nothing.

Driven over tests/unit/test_job_rules.py's Harness, on a job store that honours fences
as the DynamoDB one does (tests/contract/test_fence.py): a write with a fence lands only
while that fence is the lease's current one; a write without one lands always.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from job_manager.manager import ExecutionReport, JobManager
from job_manager.model import JobRecord, JobStatus
from job_manager.stores import Deposed, Fence
from tests.faults import FlakyJobStore
from tests.unit.test_job_rules import ALICE, Harness
from tests.unit.test_manager_paths import until

OURS = Fence("a", 1)
THEIRS = Fence("b", 2)


class FencedJobs(FlakyJobStore):
    """A job store whose lease is ``current``: a fenced write of another term is Deposed."""

    current = OURS

    def _check(self, fence: Fence | None) -> None:
        if fence is not None and fence != self.current:
            raise Deposed(fence)

    async def create(self, record: JobRecord, fence: Fence | None = None) -> None:
        self._check(fence)
        await super().create(record, fence)

    async def transition(self, before: JobRecord, after: JobRecord,
                         fence: Fence | None = None) -> bool:
        self._check(fence)
        return await super().transition(before, after, fence)


class FencedHarness(Harness):
    lease = OURS  # the lease's current term, kept across a restart's new stores

    def _open_stores(self) -> tuple[FlakyJobStore, object]:  # type: ignore[override]
        jobs, payloads = super()._open_stores()
        fenced = FencedJobs(jobs.inner)
        fenced.current = self.lease
        return fenced, payloads

    def new_manager(self, backends: str | None = None, **settings: object) -> JobManager:
        return super().new_manager(*(() if backends is None else (backends,)),
                                   fence=OURS, **settings)  # type: ignore[arg-type]

    def depose(self) -> None:
        assert isinstance(self.jobs, FencedJobs)
        self.lease = self.jobs.current = THEIRS


@pytest.fixture
async def fh(tmp_path: Path) -> AsyncIterator[FencedHarness]:
    harness = FencedHarness(tmp_path)
    yield harness
    await harness.close()


async def test_a_deposed_submission_stores_nothing_and_keeps_nothing(fh: FencedHarness) -> None:
    fh.depose()
    with pytest.raises(Deposed):
        await fh.submit(program=b"seven b")
    assert await fh.records() == []
    assert fh.inputs() == []  # the program it wrote first is deleted
    assert fh.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0
    assert fh.manager.usage(ALICE.fingerprint, ALICE.role).queued_bytes == 0
    assert fh.manager.queue_length("emulator") == 0


async def test_a_deposed_hand_over_leaves_the_job_queued(fh: FencedHarness) -> None:
    job = await fh.submit()
    fh.depose()
    with pytest.raises(Deposed):
        await fh.manager.assign("emulator")
    assert (await fh.stored(job)).status is JobStatus.QUEUED
    assert fh.manager.queue_length("emulator") == 1


async def test_a_deposed_cancel_leaves_the_job_queued(fh: FencedHarness) -> None:
    job = await fh.submit()
    fh.depose()
    with pytest.raises(Deposed):
        await fh.manager.cancel(ALICE, job)
    assert (await fh.stored(job)).status is JobStatus.QUEUED


async def test_a_deposed_report_leaves_the_job_running(fh: FencedHarness) -> None:
    job = await fh.submit()
    await fh.assign()
    await fh.upload_result(job)
    fh.depose()
    with pytest.raises(Deposed):
        await fh.manager.report(ExecutionReport(job, JobStatus.COMPLETED))
    assert (await fh.stored(job)).status is JobStatus.RUNNING


async def test_a_deposed_give_back_leaves_the_job_running(
        fh: FencedHarness, caplog: pytest.LogCaptureFixture) -> None:
    job = await fh.submit()
    assignment = await fh.assign()
    fh.depose()
    fh.manager.give_back(assignment)
    await until(lambda: any("could not be given back" in r.getMessage()
                            for r in caplog.records))
    assert (await fh.stored(job)).status is JobStatus.RUNNING


async def test_a_deposed_recovery_fails_no_job_of_a_backend_gone(fh: FencedHarness) -> None:
    job = await fh.submit(backend="qpu")
    fh.depose()
    with pytest.raises(Deposed):
        await fh.restart(backends="[backends.emulator.developer]\nstatus = \"available\"\n")
    assert (await fh.stored(job)).status is JobStatus.QUEUED

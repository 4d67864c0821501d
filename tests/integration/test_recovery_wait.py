"""While a restarted scheduler recovers its queues, no call is refused (docs/replicas.md).

Reads are answered from the store at once; calls that change jobs wait for the recovery
and are answered when it ends. The SDK forgives one failed attempt, so a refusal during
recovery would fail a user's run; a wait does not.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from job_manager.manager import JobManager
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2, submission_pb2
from scheduler.app import Scheduler
from tests.helpers import (
    TEST_BACKENDS_TOML,
    Clients,
    local_config,
    standalone_token,
    submit_request,
)


async def test_while_the_queues_recover_reads_are_answered_and_changes_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    token = standalone_token(data_dir, "alice", "developer")
    first = Scheduler(local_config(data_dir))
    await first.start()
    clients = Clients(first.submission_port, first.execution_port)
    queued = (await clients.submission.SubmitJob(submit_request(token), timeout=10)).job_id
    await clients.close()
    await first.stop(grace_s=0)

    recovering, recover_now = asyncio.Event(), asyncio.Event()
    recover = JobManager.recover

    async def held(manager: JobManager) -> None:
        recovering.set()
        await recover_now.wait()
        await recover(manager)

    monkeypatch.setattr(JobManager, "recover", held)
    second = Scheduler(local_config(data_dir))
    starting = asyncio.ensure_future(second.start())
    await asyncio.wait_for(recovering.wait(), 10)
    clients = Clients(second.submission_port, second.execution_port)
    try:
        status = await clients.submission.GetJobStatus(
            submission_pb2.GetJobStatusRequest(token=token, job_id=queued), timeout=5)
        assert status.error.code == "" and status.status == job_pb2.JOB_STATUS_QUEUED

        submitted = asyncio.ensure_future(
            clients.submission.SubmitJob(submit_request(token), timeout=10))
        assigned = asyncio.ensure_future(clients.execution.AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="emulator"), timeout=10))
        await asyncio.sleep(0.3)
        assert not submitted.done() and not assigned.done()  # waiting, not refused
        assert value_of(second, "mqc3_calls_waiting_for_leader") == 2
        # Waiting holds no admission slot: a slow recovery cannot make the port "full".
        assert all(edge.admission.in_flight == 0 for edge in second._edges)

        recover_now.set()
        await asyncio.wait_for(starting, 10)
        assert (await submitted).error.code == ""
        assert (await assigned).job_id == queued  # the recovered job, first in line
        assert second.replicas.ready
    finally:
        recover_now.set()
        await clients.close()
        await second.stop(grace_s=0)


def value_of(scheduler: Scheduler, name: str) -> float:
    found = scheduler.metrics.registry.get_sample_value(name)
    return found if found is not None else 0.0

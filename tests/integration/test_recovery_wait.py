"""While a restarted scheduler recovers its queues, no call is refused (docs/replicas.md).

Reads are answered from the store at once; calls that change jobs wait for the recovery
and are answered when it ends. The SDK forgives one failed attempt, so a refusal during
recovery would fail a user's run; a wait does not.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from job_manager.manager import JobManager
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2, submission_pb2
from scheduler.wiring.app import Scheduler
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


SECRET = "nodes-shared-secret"
# The node also asks to wait for work: the submissions waiting beside it are stored after
# the recovery, maybe after its call is served.
NODE = (("authorization", f"Bearer {SECRET}"), ("x-mqc3-wait-ms", "10000"))


async def _until_waiting(scheduler: Scheduler, calls: int) -> None:
    for _ in range(200):
        if value_of(scheduler, "mqc3_calls_waiting_for_leader") == calls:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {calls} calls waiting for the leader")


async def test_while_no_leader_is_ready_strangers_are_refused_at_once_and_the_wait_is_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 27, item 5: a call waiting for a leader holds its request; made-up tokens and
    # calls past the room's calls or bytes must not wait (docs/replicas.md).
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    token = standalone_token(data_dir, "alice", "developer")
    guest = standalone_token(data_dir, "gus", "guest")
    env = {"SCHEDULER_LEADER_WAIT_MAX_CALLS": "4", "SCHEDULER_LEADER_WAIT_MAX_BYTES": "65536",
           "SCHEDULER_MAX_CALLS_IN_FLIGHT_PER_TOKEN_GUEST": "1",
           "SCHEDULER_EXECUTION_SECRET": SECRET}
    recovering, recover_now = asyncio.Event(), asyncio.Event()
    recover = JobManager.recover

    async def held(manager: JobManager) -> None:
        recovering.set()
        await recover_now.wait()
        await recover(manager)

    monkeypatch.setattr(JobManager, "recover", held)
    scheduler = Scheduler(local_config(data_dir, env=env))
    starting = asyncio.ensure_future(scheduler.start())
    await asyncio.wait_for(recovering.wait(), 10)
    clients = Clients(scheduler.submission_port, scheduler.execution_port)
    submission, execution = clients.submission, clients.execution
    try:
        # Answered while the recovery is still held, so none of them waited for it (a
        # call that waits would end in a transport UNAVAILABLE at its 5 s deadline).
        made_up = f"made-up-{uuid.uuid4()}"
        for answer in (await submission.SubmitJob(submit_request(made_up), timeout=5),
                       await submission.CancelJob(submission_pb2.CancelJobRequest(
                           token=made_up, job_id=str(uuid.uuid4())), timeout=5),
                       await execution.AssignNextJob(execution_pb2.AssignNextJobRequest(
                           backend="emulator"), timeout=5)):
            assert answer.error.code == "UNAUTHENTICATED", answer.error
        too_big = await submission.SubmitJob(
            submit_request(token, payload=b"\x00" * 70_000), timeout=5)
        assert too_big.error.code == "RESOURCE_EXHAUSTED", too_big.error
        assert "reason=leader_wait_full" in too_big.error.description

        # A token's first calls, resolved before they wait, are counted against its share.
        firsts = await asyncio.wait([asyncio.ensure_future(submission.SubmitJob(
            submit_request(guest), timeout=30)) for _ in range(2)], timeout=20,
            return_when=asyncio.FIRST_COMPLETED)
        assert [call.result().error.code for call in firsts[0]] == ["RESOURCE_EXHAUSTED"]
        assert "reason=token_busy" in next(iter(firsts[0])).result().error.description
        submitted = [*firsts[1], *(asyncio.ensure_future(submission.SubmitJob(
            submit_request(token), timeout=30)) for _ in range(2))]
        assigned = asyncio.ensure_future(execution.AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="emulator"), metadata=NODE, timeout=30))
        await _until_waiting(scheduler, 4)
        past = await submission.SubmitJob(submit_request(token), timeout=5)
        assert past.error.code == "RESOURCE_EXHAUSTED", past.error
        assert "reason=leader_wait_full" in past.error.description
        assert not recover_now.is_set() and not any(call.done() for call in submitted)

        recover_now.set()
        await asyncio.wait_for(starting, 10)
        job_ids = {(await call).job_id for call in submitted}
        assert len(job_ids) == 3 and "" not in job_ids
        assert (await assigned).job_id in job_ids
        assert value_of(scheduler, "mqc3_calls_waiting_for_leader") == 0
        room = scheduler.replicas.room  # every seat given back, the refused ones never taken
        assert (room.calls, room.bytes) == (0, 0)
    finally:
        recover_now.set()
        await clients.close()
        await scheduler.stop(grace_s=0)

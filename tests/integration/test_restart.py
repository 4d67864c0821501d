"""A restart loses nothing: queued jobs survive a stop or a crash of a real standalone process,
and come out in submission order, each exactly once."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest

from pb.mqc3_cloud.scheduler.v1 import (
    execution_pb2,
    execution_pb2_grpc,
    job_pb2,
    submission_pb2,
    submission_pb2_grpc,
)
from tests.helpers import submit_request
from tests.integration.processes import SchedulerProcess, create_token, scheduler_process


def _submit(scheduler: SchedulerProcess, token: str, count: int) -> list[str]:
    with grpc.insecure_channel(scheduler.submission_address) as channel:
        stub = submission_pb2_grpc.SubmissionServiceStub(channel)
        answers = [stub.SubmitJob(submit_request(token), timeout=10) for _ in range(count)]
    assert [a.error.code for a in answers] == [""] * count
    return [a.job_id for a in answers]


def _statuses(scheduler: SchedulerProcess, token: str, job_ids: list[str]) -> list[str]:
    with grpc.insecure_channel(scheduler.submission_address) as channel:
        stub = submission_pb2_grpc.SubmissionServiceStub(channel)
        answers = [stub.GetJobStatus(submission_pb2.GetJobStatusRequest(token=token, job_id=j),
                                     timeout=10) for j in job_ids]
    assert [a.error.code for a in answers] == [""] * len(job_ids)
    return [job_pb2.JobStatus.Name(a.status) for a in answers]


def _assign_all(scheduler: SchedulerProcess, most: int) -> list[str]:
    """Ask for jobs until the queue answers empty (at most ``most`` + 1 calls)."""
    handed_out: list[str] = []
    with grpc.insecure_channel(scheduler.execution_address) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        for _ in range(most + 1):
            answer = stub.AssignNextJob(execution_pb2.AssignNextJobRequest(backend="emulator"),
                                        timeout=10)
            assert answer.error.code == ""
            if not answer.job_id:
                break
            handed_out.append(answer.job_id)
    return handed_out


@pytest.mark.parametrize(("signum", "exit_code"), [
    pytest.param(signal.SIGTERM, 0, id="SIGTERM-drains-and-exits-0"),
    pytest.param(signal.SIGKILL, -signal.SIGKILL, id="SIGKILL-crash"),
])
def test_queued_jobs_survive_a_restart_and_come_out_in_order_once(
        tmp_path: Path, signum: signal.Signals, exit_code: int) -> None:
    data_dir = tmp_path / "data"
    token = create_token(data_dir, "alice", "developer")
    with scheduler_process(data_dir, tmp_path / "first.log") as first:
        job_ids = _submit(first, token, 3)
        assert first.stop(signum, timeout_s=5) == exit_code

    with scheduler_process(data_dir, tmp_path / "second.log") as second:
        assert _statuses(second, token, job_ids) == ["JOB_STATUS_QUEUED"] * 3
        assert _assign_all(second, most=3) == job_ids
        assert _statuses(second, token, job_ids) == ["JOB_STATUS_RUNNING"] * 3

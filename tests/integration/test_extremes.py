"""Every value the wire allows travels a job's whole life and a restart (docs/job-rules.md,
rule 18): the largest timeouts through submission, hand-over, report, reads and restarts of
the real scheduler process in both modes; then each field of each request at its extremes.

A deadline beyond what a date can hold means no deadline: such a job is never timed out
by its declared timeout (heartbeats still watch it: tests/unit/test_nodes.py).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import requests

from pb.mqc3_cloud.scheduler.v1 import (
    execution_pb2,
    execution_pb2_grpc,
    job_pb2,
    submission_pb2,
    submission_pb2_grpc,
)
from pb.mqc3_scheduler.extension.v1 import jobs_pb2, jobs_pb2_grpc
from tests.helpers import UPLOAD_HEADERS, gzip_result, submit_request
from tests.integration.processes import (
    Deployment,
    ScriptProcess,
    aws_deployment,
    standalone_deployment,
)

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1
MAX_NANOS = 999_999_999
BEYOND_DATES_S = 300_000_000_000  # 3e11 s from a hand-over: past the year 9999
RPC_TIMEOUT_S = 10
RESULT = b"\x0a\x06result"


@pytest.fixture
async def deployment(mode: str, tmp_path: Path,
                     request: pytest.FixtureRequest) -> AsyncIterator[Deployment]:
    """Data for a real scheduler process in ``mode``; every process is killed at the end."""
    if mode == "standalone":
        with standalone_deployment(tmp_path) as found:
            yield found
        return
    async with aws_deployment(tmp_path, request.getfixturevalue("moto_endpoint")) as found:
        yield found


def _submit(process: ScriptProcess, token: str, seconds: int, nanos: int = 0,
            n_shots: int = 100) -> str:
    request = submit_request(token, n_shots=n_shots)
    request.job.settings.timeout.seconds = seconds
    request.job.settings.timeout.nanos = nanos
    with grpc.insecure_channel(process.submission_address) as channel:
        answer = submission_pb2_grpc.SubmissionServiceStub(channel).SubmitJob(
            request, timeout=RPC_TIMEOUT_S)
    assert answer.error.code == "", (answer.error, process.log()[-3000:])
    return str(answer.job_id)


def _assign(process: ScriptProcess) -> execution_pb2.AssignNextJobResponse:
    with grpc.insecure_channel(process.execution_address) as channel:
        answer = execution_pb2_grpc.ExecutionServiceStub(channel).AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="emulator"), timeout=RPC_TIMEOUT_S)
    assert answer.error.code == "", (answer.error, process.log()[-3000:])
    return answer


def _report(process: ScriptProcess, job_id: str,
            status: execution_pb2.ExecutionStatus) -> None:
    report = execution_pb2.ReportExecutionResultRequest(job_id=job_id, status=status)
    report.uploaded_result.raw_size_bytes = UINT64_MAX
    report.uploaded_result.encoded_size_bytes = UINT64_MAX
    with grpc.insecure_channel(process.execution_address) as channel:
        answer = execution_pb2_grpc.ExecutionServiceStub(channel).ReportExecutionResult(
            report, timeout=RPC_TIMEOUT_S)
    assert answer.error.code == "", (answer.error, process.log()[-3000:])


def _status(process: ScriptProcess, token: str, job_id: str
            ) -> submission_pb2.GetJobStatusResponse:
    with grpc.insecure_channel(process.submission_address) as channel:
        answer = submission_pb2_grpc.SubmissionServiceStub(channel).GetJobStatus(
            submission_pb2.GetJobStatusRequest(token=token, job_id=job_id),
            timeout=RPC_TIMEOUT_S)
    assert answer.error.code == "", (answer.error, process.log()[-3000:])
    return answer


def _status_name(process: ScriptProcess, token: str, job_id: str) -> str:
    return str(job_pb2.JobStatus.Name(_status(process, token, job_id).status))


def _usage_and_listing(process: ScriptProcess, token: str) -> tuple[int, int]:
    """GetUsage's total shots and how many jobs ListJobs shows, both answered OK."""
    with grpc.insecure_channel(process.submission_address) as channel:
        stub = jobs_pb2_grpc.JobsServiceStub(channel)
        usage = stub.GetUsage(jobs_pb2.GetUsageRequest(token=token), timeout=RPC_TIMEOUT_S)
        listing = stub.ListJobs(jobs_pb2.ListJobsRequest(token=token), timeout=RPC_TIMEOUT_S)
    assert (usage.error.code, listing.error.code) == ("", ""), (usage.error, listing.error)
    return usage.usage[0].total_shots, len(listing.jobs)


def _restart(deployment: Deployment, before: ScriptProcess, name: str,
             signum: signal.Signals = signal.SIGKILL) -> ScriptProcess:
    before.stop(signum)
    return deployment.start(name)


def _a_job_of_the_largest_timeout_lives_and_restarts(deployment: Deployment) -> None:
    token = deployment.token("alice", "developer")
    first = deployment.start("first")
    longest = _submit(first, token, INT64_MAX, MAX_NANOS, n_shots=INT32_MAX)
    beyond = _submit(first, token, BEYOND_DATES_S)
    # A shorter declared timeout goes earlier among equals, whatever the sizes.
    taken = _assign(first)
    assert taken.job_id == beyond
    assert taken.job.settings.timeout.seconds == BEYOND_DATES_S  # as the user sent it
    assert _status_name(first, token, beyond) == "JOB_STATUS_RUNNING"
    queued = _status(first, token, longest)
    assert job_pb2.JobStatus.Name(queued.status) == "JOB_STATUS_QUEUED"
    assert queued.status_detail.startswith("queued: 1st of 1"), queued.status_detail

    # A crash with one such job RUNNING and one QUEUED: the next start serves both.
    second = _restart(deployment, first, "second")
    assert _status_name(second, token, beyond) == "JOB_STATUS_RUNNING"
    assert _status_name(second, token, longest) == "JOB_STATUS_QUEUED"
    handed = _assign(second)
    assert handed.job_id == longest
    timeout = handed.job.settings.timeout
    assert (timeout.seconds, timeout.nanos) == (INT64_MAX, MAX_NANOS)
    assert handed.job.settings.n_shots == INT32_MAX

    # A restart with both RUNNING; then reports, reads and one more (clean) restart.
    third = _restart(deployment, second, "third")
    upload = requests.put(handed.upload_target.upload_url, data=gzip_result(RESULT),
                          headers=UPLOAD_HEADERS, timeout=RPC_TIMEOUT_S)
    assert upload.status_code < 300, upload.text
    _report(third, longest, execution_pb2.EXECUTION_STATUS_SUCCESS)
    _report(third, beyond, execution_pb2.EXECUTION_STATUS_FAILURE)
    with grpc.insecure_channel(third.submission_address) as channel:
        result = submission_pb2_grpc.SubmissionServiceStub(channel).GetJobResult(
            submission_pb2.GetJobResultRequest(token=token, job_id=longest),
            timeout=RPC_TIMEOUT_S)
    assert (result.error.code, result.status) == ("", job_pb2.JOB_STATUS_COMPLETED)
    assert result.result.result_url
    assert _usage_and_listing(third, token) == (INT32_MAX, 2)
    fourth = _restart(deployment, third, "fourth", signal.SIGTERM)
    assert _status_name(fourth, token, longest) == "JOB_STATUS_COMPLETED"
    assert _status_name(fourth, token, beyond) == "JOB_STATUS_FAILED"
    assert _submit(fourth, token, 60) == _assign(fourth).job_id  # and serves on


async def test_a_job_of_the_largest_timeout_lives_its_whole_life_and_every_restart(
        deployment: Deployment) -> None:
    try:
        await asyncio.to_thread(_a_job_of_the_largest_timeout_lives_and_restarts, deployment)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{deployment.logs()}") from None

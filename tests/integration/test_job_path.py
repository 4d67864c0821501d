"""A job's whole path over real gRPC and HTTP, in both modes."""

from __future__ import annotations

import asyncio
import gzip

import requests

from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2, submission_pb2
from tests.conftest import Running
from tests.helpers import UPLOAD_HEADERS, submit_request

# Nested fields and field numbers the scheduler's schema knows nothing about.
FOREIGN_PAYLOAD = bytes.fromhex("0a0568656c6c6f12060801120208ffa00603746167f8ffffff0f01")


async def _put(url: str, body: bytes) -> requests.Response:
    return await asyncio.to_thread(requests.put, url, data=body, headers=UPLOAD_HEADERS, timeout=10)


async def _get(url: str) -> requests.Response:
    return await asyncio.to_thread(
        requests.get, url, headers={"Accept-Encoding": "gzip"}, timeout=10
    )


async def test_job_travels_from_submission_to_downloaded_result(running: Running) -> None:
    token = running.token("alice", "developer")
    submission, clients = submit_request(token, payload=FOREIGN_PAYLOAD), running.clients

    submitted = await clients.submission.SubmitJob(submission)
    assert submitted.error.code == ""
    job_id = submitted.job_id

    queued = await clients.submission.GetJobStatus(
        submission_pb2.GetJobStatusRequest(token=token, job_id=job_id)
    )
    assert queued.status == job_pb2.JOB_STATUS_QUEUED
    assert queued.execution_details.version.scheduler_version
    assert queued.execution_details.timestamps.HasField("submitted_at")
    assert queued.execution_details.timestamps.HasField("queued_at")

    assigned = await clients.assign("emulator")
    assert assigned.job_id == job_id
    # The program reaches the backend byte for byte; the role comes from the token.
    assert assigned.job.program.SerializeToString() == submission.job.program.SerializeToString()
    assert assigned.job.program.circuit == FOREIGN_PAYLOAD
    assert assigned.job.settings.role == "developer"
    assert assigned.job.settings.n_shots == 100
    assert assigned.upload_target.upload_url
    assert assigned.upload_target.expires_at.seconds > 0

    raw = b"\x0a\x03abc"
    upload = await _put(assigned.upload_target.upload_url, gzip.compress(raw))
    assert upload.status_code == 200

    report = execution_pb2.ReportExecutionResultRequest(
        job_id=job_id,
        status=execution_pb2.EXECUTION_STATUS_SUCCESS,
        version=execution_pb2.ExecutionVersion(physical_lab="lab-2.1", simulator="sim-0.9"),
    )
    # The node's own times, within the job's run (from its hand-over to now; times
    # outside it are clamped: tests/unit/test_clock_steps.py).
    while_running = await clients.submission.GetJobStatus(
        submission_pb2.GetJobStatusRequest(token=token, job_id=job_id))
    handed_over = while_running.execution_details.timestamps.dequeued_at
    report.timestamps.compile_started_at.CopyFrom(handed_over)
    report.timestamps.execution_finished_at.CopyFrom(handed_over)
    reported = await clients.execution.ReportExecutionResult(report)
    assert reported.error.code == ""

    status = await clients.submission.GetJobStatus(
        submission_pb2.GetJobStatusRequest(token=token, job_id=job_id)
    )
    assert status.status == job_pb2.JOB_STATUS_COMPLETED
    stamps = status.execution_details.timestamps
    for name in ("submitted_at", "queued_at", "dequeued_at", "finished_at"):
        assert stamps.HasField(name), name
    assert stamps.compile_started_at == handed_over
    assert stamps.execution_finished_at == handed_over
    assert status.execution_details.version.physical_lab_version == "lab-2.1"

    result = await clients.submission.GetJobResult(
        submission_pb2.GetJobResultRequest(token=token, job_id=job_id)
    )
    assert result.error.code == ""
    assert result.status == job_pb2.JOB_STATUS_COMPLETED
    assert result.result.result_url
    assert result.result.expires_at.seconds > 0
    download = await _get(result.result.result_url)
    assert download.status_code == 200
    assert download.headers.get("Content-Encoding") == "gzip"
    assert download.content == raw  # requests undid the gzip, as the SDK relies on

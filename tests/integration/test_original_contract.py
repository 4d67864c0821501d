"""What clients of the original send is accepted with the default settings, in both modes.

The SDK's defaults and the values its own end-to-end tests use (docs/differences.md):
timeouts of 180 s and 3600 s for every role, shot counts far past any cap we could set,
programs up to the role's byte limit, and the jobs the original stored
(tests/data/original_records/), submitted again as a client would.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import grpc
import pytest

from pb.mqc3_cloud.program.v1 import quantum_program_pb2 as program_pb2
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, execution_pb2_grpc, job_pb2
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from tests.conftest import SHARED, Running
from tests.helpers import submit_request

ORIGINAL = Path(__file__).parent.parent / "data" / "original_records"
MB = 1024 * 1024
ROLE_BYTES = {"admin": 10 * MB, "developer": 10 * MB, "guest": 1 * MB}  # the original's
HEADROOM = 1024  # the request's own fields beside the program


async def _accepted(running: Running, request: pb.SubmitJobRequest) -> str:
    answer = await running.clients.submission.SubmitJob(request)
    assert answer.error.code == "", answer.error
    return str(answer.job_id)


async def _cancel(running: Running, token: str, job_id: str) -> None:
    answer = await running.clients.submission.CancelJob(
        pb.CancelJobRequest(token=token, job_id=job_id))
    assert answer.error.code == "", answer.error


@SHARED
@pytest.mark.parametrize("role", ["admin", "developer", "guest"])
async def test_the_sdks_timeouts_and_shots_are_accepted_for_every_role(
        shared: Running, role: str) -> None:
    token = shared.token(f"sdk-{role}", role)
    for timeout_s, n_shots in [(180, 1024), (3600, 1), (3600, 2**31 - 1), (86_400, 10**7)]:
        request = submit_request(token, timeout_s=timeout_s, n_shots=n_shots)
        job_id = await _accepted(shared, request)
        status = await shared.clients.submission.GetJobStatus(
            pb.GetJobStatusRequest(token=token, job_id=job_id))
        assert status.status == job_pb2.JOB_STATUS_QUEUED
        await _cancel(shared, token, job_id)  # stays within the role's concurrent jobs


@pytest.mark.parametrize("role", ["guest", "developer"])
async def test_a_program_up_to_the_roles_byte_limit_is_accepted_and_handed_over(
        running: Running, role: str) -> None:
    token = running.token(f"big-{role}", role)
    payload = b"\x07" * (ROLE_BYTES[role] - HEADROOM)
    request = submit_request(token, payload=payload)
    assert request.ByteSize() <= ROLE_BYTES[role]
    job_id = await _accepted(running, request)
    # A node takes messages as large as the execution port sends (gRPC's client default
    # is 4 MiB; the original's nodes raise it to the port's limit).
    node_options = [("grpc.max_receive_message_length", 2 * ROLE_BYTES[role])]
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{running.scheduler.execution_port}", options=node_options) as channel:
        assigned = await execution_pb2_grpc.ExecutionServiceStub(channel).AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="emulator"), timeout=10)
    assert assigned.error.code == "", assigned.error
    assert assigned.job_id == job_id
    assert assigned.job.program.circuit == payload


def _original_requests() -> list[tuple[str, pb.SubmitJobRequest]]:
    """Each stored job of the original as the SubmitJobRequest that made it (token aside)."""
    items = json.loads((ORIGINAL / "items.json").read_text())["items"]
    objects = {o["key"]: o for o in json.loads((ORIGINAL / "objects.json").read_text())}
    requests = []
    for item in items:
        job_id = item["job_id"]["S"]
        request = pb.SubmitJobRequest(sdk_version=item["sdk_version"]["S"])
        request.job.program.CopyFrom(program_pb2.QuantumProgram.FromString(
            base64.b64decode(objects[f"{job_id}.in.proto"]["body_base64"])))
        settings = request.job.settings
        settings.backend = item["requested_backend"]["S"]
        settings.n_shots = int(item["n_shots"]["N"])
        settings.timeout.seconds = int(item["max_elapsed_s"]["N"])
        settings.state_save_policy = job_pb2.JobStateSavePolicy.Value(
            "JOB_STATE_SAVE_POLICY_" + item["state_save_policy"]["S"])
        settings.resource_squeezing_level = float(item["resource_squeezing_level"]["N"])
        request.options.save_job = item["save_job"]["BOOL"]
        requests.append((item["role"]["S"], request))
    return requests


async def test_the_jobs_the_original_stored_are_accepted_again(running: Running) -> None:
    tokens = {role: running.token(f"original-{role}", role)
              for role in ("admin", "developer", "guest")}
    for role, request in _original_requests():
        request.token = tokens[role]
        job_id = await _accepted(running, request)
        assigned = await running.clients.assign()
        assert assigned.job_id == job_id
        assert assigned.job.program == request.job.program
        assert assigned.job.settings.n_shots == request.job.settings.n_shots
        assert assigned.job.settings.role == role


# --- size limits that agree end to end -------------------------------------------------------
def _request_of(token: str, size: int) -> pb.SubmitJobRequest:
    """A SubmitJobRequest of exactly ``size`` bytes."""
    request = submit_request(token, payload=b"")
    request.job.program.circuit = b"\x07" * (size - request.ByteSize())
    while request.ByteSize() > size:  # the payload's length prefix grew
        request.job.program.circuit = request.job.program.circuit[:-1]
    return request


async def test_a_job_whose_assignment_would_not_fit_is_refused_at_submission(
        running: Running) -> None:
    token = running.token("big", "developer")
    # Within the role's 10 MiB, but its assignment (program, settings, upload URL) is not.
    too_big = _request_of(token, ROLE_BYTES["developer"] - 8)
    answer = await running.clients.submission.SubmitJob(too_big)
    assert answer.error.code == "INVALID_ARGUMENT"
    assert "SCHEDULER_EXECUTION_MAX_MESSAGE_LENGTH" in answer.error.description
    # With a little less, it is accepted and handed over whole.
    fits = _request_of(token, ROLE_BYTES["developer"] - 4096)
    job_id = await _accepted(running, fits)
    node_options = [("grpc.max_receive_message_length", 2 * ROLE_BYTES["developer"])]
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{running.scheduler.execution_port}", options=node_options) as channel:
        assigned = await execution_pb2_grpc.ExecutionServiceStub(channel).AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="emulator"), timeout=10)
    assert (assigned.error.code, assigned.job_id) == ("", job_id)


async def _failure_report_of_a_running_job(
        running: Running, token: str) -> execution_pb2.ReportExecutionResultRequest:
    job_id = await _accepted(running, submit_request(token))
    assert (await running.clients.assign()).job_id == job_id
    return execution_pb2.ReportExecutionResultRequest(
        job_id=job_id, status=execution_pb2.EXECUTION_STATUS_FAILURE)


async def test_a_report_near_the_message_limit_can_still_be_read_back(running: Running) -> None:
    token = running.token("alice", "developer")
    report = await _failure_report_of_a_running_job(running, token)
    job_id = report.job_id
    report.error.code = "COMPILE_ERROR"
    report.error.description = "x" * (9 * MB)
    answer = await running.clients.execution.ReportExecutionResult(report, timeout=30)
    assert answer.error.code == "", answer.error
    result = await running.clients.submission.GetJobResult(
        pb.GetJobResultRequest(token=token, job_id=job_id), timeout=10)
    assert result.error.code == "" and result.status == job_pb2.JOB_STATUS_FAILED
    assert result.status_detail.startswith("x" * 1000)
    assert "more characters" in result.status_detail
    assert len(result.status_detail) < 20_000


async def test_a_report_with_an_oversized_version_is_refused_naming_it(running: Running) -> None:
    report = await _failure_report_of_a_running_job(running, running.token("alice", "developer"))
    report.version.simulator = "v" * 257
    answer = await running.clients.execution.ReportExecutionResult(report)
    assert answer.error.code == "INVALID_ARGUMENT"
    assert "version.simulator" in answer.error.description

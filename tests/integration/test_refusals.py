"""Every refusal over real gRPC, in both modes: the in-band code, a description that says
what is wrong, and nothing changed by the refused call."""

from __future__ import annotations

import asyncio
import gzip
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from common.clock import SystemClock
from common.identity import fingerprint
from pb.mqc3_cloud.common.v1.error_detail_pb2 import ErrorDetail
from pb.mqc3_cloud.program.v1 import quantum_program_pb2 as program_pb2
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2, submission_pb2_grpc
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from scheduler.wiring.app import Scheduler
from scheduler.wiring.standalone import token_store_path
from tests.conftest import SHARED, Running, scheduler_in
from tests.helpers import (
    UPLOAD_HEADERS,
    AwsNames,
    Clients,
    TokenDatabase,
    aws_config,
    submit_request,
)
from token_database.service import create_token
from token_database.store import FINGERPRINT_PREFIX, SqliteTokenStore

MAINTENANCE_DESCRIPTION = "qpu calibration until 18:00"  # tests.helpers.TEST_BACKENDS_TOML
GUEST_DESCRIPTION = "qpu is not offered to guests"


# --- helpers ------------------------------------------------------------------------------
def _queued(running: Running, backend: str = "emulator") -> int:
    return running.scheduler.manager.queue_length(backend)


def _live(running: Running) -> int:
    return running.scheduler.manager.live_jobs()


async def _submit(running: Running, token: str, backend: str = "emulator") -> str:
    answer = await running.clients.submission.SubmitJob(submit_request(token, backend))
    assert answer.error.code == "", answer.error
    return str(answer.job_id)


async def _status(running: Running, token: str, job_id: str) -> int:
    answer = await running.clients.submission.GetJobStatus(
        pb.GetJobStatusRequest(token=token, job_id=job_id))
    assert answer.error.code == "", answer.error
    return int(answer.status)


async def _report(running: Running, job_id: str,
                  status: execution_pb2.ExecutionStatus) -> ErrorDetail:
    answer = await running.clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(job_id=job_id, status=status))
    return answer.error


async def _upload(url: str) -> None:
    answer = await asyncio.to_thread(requests.put, url, data=gzip.compress(b"\x0a\x01r"),
                                     headers=UPLOAD_HEADERS, timeout=10)
    assert answer.status_code == 200


def _expired_token(running: Running) -> str:
    """A developer token that expired an hour ago, in whichever store the scheduler reads."""
    expired_at = datetime.now(UTC) - timedelta(hours=1)
    if running.token_database is not None:  # AWS mode: the test's own TokenDatabase
        return create_token(running.token_database.store, SystemClock(), "alice", "developer",
                            expired_at)[0]
    assert running.data_dir is not None
    store = SqliteTokenStore(token_store_path(running.data_dir))
    try:
        return create_token(store, SystemClock(), "alice", "developer", expired_at)[0]
    finally:
        store.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


JobCall = Callable[[submission_pb2_grpc.SubmissionServiceStub, str, str], Awaitable[Any]]


async def _get_job_status(stub: Any, token: str, job_id: str) -> Any:
    return await stub.GetJobStatus(pb.GetJobStatusRequest(token=token, job_id=job_id))


async def _get_job_result(stub: Any, token: str, job_id: str) -> Any:
    return await stub.GetJobResult(pb.GetJobResultRequest(token=token, job_id=job_id))


async def _cancel_job(stub: Any, token: str, job_id: str) -> Any:
    return await stub.CancelJob(pb.CancelJobRequest(token=token, job_id=job_id))


JOB_CALLS = [pytest.param(_get_job_status, id="GetJobStatus"),
             pytest.param(_get_job_result, id="GetJobResult"),
             pytest.param(_cancel_job, id="CancelJob")]


async def _token_refusals(stub: Any, token: str, job_id: str) -> dict[str, ErrorDetail]:
    """The errors of SubmitJob, GetJobStatus and GetServiceStatus called with ``token``."""
    return {
        "SubmitJob": (await stub.SubmitJob(submit_request(token))).error,
        "GetJobStatus": (await _get_job_status(stub, token, job_id)).error,
        "GetServiceStatus": (await stub.GetServiceStatus(
            pb.GetServiceStatusRequest(token=token, backend="emulator"))).error,
    }


# --- cancelling ---------------------------------------------------------------------------
async def test_cancelling_a_queued_job_takes_it_out_of_the_queue(running: Running) -> None:
    token = running.token()
    job_id = await _submit(running, token)

    cancelled = await _cancel_job(running.clients.submission, token, job_id)

    assert cancelled.error.code == ""
    assert await _status(running, token, job_id) == job_pb2.JOB_STATUS_CANCELLED
    assert (await running.clients.assign()).job_id == ""
    assert _queued(running) == 0


async def test_cancelling_a_running_job_is_refused_and_it_keeps_running(running: Running) -> None:
    token = running.token()
    job_id = await _submit(running, token)
    assert (await running.clients.assign()).job_id == job_id

    refused = await _cancel_job(running.clients.submission, token, job_id)

    assert refused.error.code == "FAILED_PRECONDITION"
    assert "RUNNING" in refused.error.description
    assert await _status(running, token, job_id) == job_pb2.JOB_STATUS_RUNNING


# --- unknown and malformed ids ------------------------------------------------------------
@SHARED
@pytest.mark.parametrize("call", JOB_CALLS)
async def test_an_unknown_job_is_not_found(shared: Running, call: JobCall) -> None:
    job_id = str(uuid.uuid4())
    live = _live(shared)

    answer = await call(shared.clients.submission, shared.token(), job_id)

    assert answer.error.code == "NOT_FOUND"
    assert job_id in answer.error.description
    assert _live(shared) == live


@SHARED
@pytest.mark.parametrize("call", JOB_CALLS)
async def test_another_users_job_is_not_found_and_untouched(shared: Running,
                                                            call: JobCall) -> None:
    alice = shared.token("alice", "developer")
    queued = _queued(shared)
    job_id = await _submit(shared, alice)

    answer = await call(shared.clients.submission, shared.token("bob", "developer"), job_id)

    assert answer.error.code == "NOT_FOUND"
    assert job_id in answer.error.description
    assert await _status(shared, alice, job_id) == job_pb2.JOB_STATUS_QUEUED
    assert _queued(shared) == queued + 1


@SHARED
@pytest.mark.parametrize("call", JOB_CALLS)
@pytest.mark.parametrize("job_id", ["not-a-job-id", f"{uuid.uuid4()}\n", f" {uuid.uuid4()}",
                                    str(uuid.uuid4())[:-1], f"{{{uuid.uuid4()}}}"])
async def test_a_malformed_job_id_is_invalid_argument(shared: Running, call: JobCall,
                                                      job_id: str) -> None:
    answer = await call(shared.clients.submission, shared.token(), job_id)

    assert answer.error.code == "INVALID_ARGUMENT"
    assert "job_id" in answer.error.description
    assert repr(job_id) in answer.error.description


# Ids this scheduler never issued but which are UUIDs: jobs that do not exist.
NEVER_ISSUED = ["00000000-0000-0000-0000-000000000000", str(uuid.uuid1()),
                str(uuid.uuid4()).upper()]


@SHARED
@pytest.mark.parametrize("call", JOB_CALLS)
@pytest.mark.parametrize("job_id", NEVER_ISSUED)
async def test_a_well_formed_unknown_job_id_is_not_found(shared: Running, call: JobCall,
                                                         job_id: str) -> None:
    answer = await call(shared.clients.submission, shared.token(), job_id)

    assert answer.error.code == "NOT_FOUND", answer.error
    assert job_id in answer.error.description


@SHARED
@pytest.mark.parametrize("job_id", NEVER_ISSUED)
async def test_a_node_naming_an_unknown_job_id_is_answered_not_found(shared: Running,
                                                                    job_id: str) -> None:
    report = await _report(shared, job_id, execution_pb2.EXECUTION_STATUS_FAILURE)
    refresh = await shared.clients.execution.RefreshUploadUrl(
        execution_pb2.RefreshUploadUrlRequest(job_id=job_id))

    assert (report.code, refresh.error.code) == ("NOT_FOUND", "NOT_FOUND")


# --- unknown backends ---------------------------------------------------------------------
@SHARED
async def test_submitting_to_an_unknown_backend_is_invalid_argument_naming_it(
        shared: Running) -> None:
    live = _live(shared)
    answer = await shared.clients.submission.SubmitJob(
        submit_request(shared.token(), "no-such-backend"))

    assert answer.error.code == "INVALID_ARGUMENT"
    assert "no-such-backend" in answer.error.description
    assert "emulator" in answer.error.description  # the known ones are listed
    assert answer.job_id == ""
    assert _queued(shared, "no-such-backend") == 0
    assert _live(shared) == live


@SHARED
async def test_assigning_from_an_unknown_backend_is_invalid_argument_naming_it(
        shared: Running) -> None:
    queued = _queued(shared)
    await _submit(shared, shared.token("alice-of-the-unknown-backend"))

    answer = await shared.clients.assign("no-such-backend")

    assert answer.error.code == "INVALID_ARGUMENT"
    assert "no-such-backend" in answer.error.description
    assert answer.job_id == ""
    assert _queued(shared) == queued + 1


@SHARED
async def test_service_status_of_an_unknown_backend_is_invalid_argument(shared: Running) -> None:
    answer = await shared.clients.submission.GetServiceStatus(
        pb.GetServiceStatusRequest(token=shared.token(), backend="no-such-backend"))

    assert answer.error.code == "INVALID_ARGUMENT"
    assert "no-such-backend" in answer.error.description


# --- tokens -------------------------------------------------------------------------------
@SHARED
@pytest.mark.parametrize(("kind", "says"), [("empty", "no token"), ("unknown", "not known"),
                                            ("expired", "expired")])
async def test_a_bad_token_is_unauthenticated_everywhere(shared: Running, kind: str,
                                                        says: str) -> None:
    queued = _queued(shared)
    job_id = await _submit(shared, shared.token())
    token = {"empty": lambda: "", "unknown": lambda: "mqc3_" + uuid.uuid4().hex,
             "expired": lambda: _expired_token(shared)}[kind]()

    errors = await _token_refusals(shared.clients.submission, token, job_id)

    for rpc, error in errors.items():
        assert error.code == "UNAUTHENTICATED", rpc
        assert says in error.description, rpc
    assert _queued(shared) == queued + 1


@SHARED
async def test_a_token_fingerprint_is_not_a_token(shared: Running) -> None:
    # Stores and listings hold fingerprints so that reading them reveals no credential.
    token = shared.token("alice-of-the-fingerprint")
    queued = _queued(shared)
    job_id = await _submit(shared, token)

    errors = await _token_refusals(shared.clients.submission,
                                   FINGERPRINT_PREFIX + fingerprint(token), job_id)

    for rpc, error in errors.items():
        assert error.code == "UNAUTHENTICATED", rpc
    assert _queued(shared) == queued + 1


async def test_token_database_down_is_unavailable(aws_names: AwsNames) -> None:
    scheduler = Scheduler(aws_config(aws_names, f"127.0.0.1:{_closed_port()}"))
    await scheduler.start()
    clients = Clients(scheduler.submission_port, scheduler.execution_port)
    try:
        errors = await _token_refusals(clients.submission, "mqc3_some-token", str(uuid.uuid4()))
    finally:
        await clients.close()
        await scheduler.stop(grace_s=0)

    for rpc, error in errors.items():
        assert error.code == "UNAVAILABLE", rpc
        assert "token database" in error.description, rpc
    assert scheduler.manager.queue_length("emulator") == 0


# --- backend availability by role ---------------------------------------------------------
@SHARED
async def test_submitting_to_a_backend_in_maintenance_is_unavailable_with_its_description(
        shared: Running) -> None:
    queued = _queued(shared, "qpu")
    answer = await shared.clients.submission.SubmitJob(
        submit_request(shared.token("dave", "developer"), "qpu"))

    assert answer.error.code == "UNAVAILABLE"
    assert MAINTENANCE_DESCRIPTION in answer.error.description
    assert answer.job_id == ""
    assert _queued(shared, "qpu") == queued


@SHARED
async def test_service_status_of_a_backend_in_maintenance_is_an_answer_not_an_error(
        shared: Running) -> None:
    answer = await shared.clients.submission.GetServiceStatus(
        pb.GetServiceStatusRequest(token=shared.token("dave", "developer"), backend="qpu"))

    assert answer.error.code == ""
    assert answer.status == pb.SERVICE_STATUS_MAINTENANCE
    assert answer.description == MAINTENANCE_DESCRIPTION


@SHARED
async def test_a_backend_not_offered_to_guests_refuses_their_jobs(shared: Running) -> None:
    guest = shared.token("gus", "guest")
    queued = _queued(shared, "qpu")

    submitted = await shared.clients.submission.SubmitJob(submit_request(guest, "qpu"))
    status = await shared.clients.submission.GetServiceStatus(
        pb.GetServiceStatusRequest(token=guest, backend="qpu"))

    assert submitted.error.code == "UNAVAILABLE"
    assert GUEST_DESCRIPTION in submitted.error.description
    assert (status.error.code, status.status) == ("", pb.SERVICE_STATUS_UNAVAILABLE)
    assert status.description == GUEST_DESCRIPTION
    assert _queued(shared, "qpu") == queued


@SHARED
async def test_an_admin_may_submit_to_a_backend_closed_to_other_roles(shared: Running) -> None:
    queued = _queued(shared, "qpu")
    await _submit(shared, shared.token("ada", "admin"), "qpu")

    assert _queued(shared, "qpu") == queued + 1


# --- results and reports ------------------------------------------------------------------
async def test_the_result_of_an_unfinished_job_is_refused(running: Running) -> None:
    token = running.token()
    job_id = await _submit(running, token)

    queued = await _get_job_result(running.clients.submission, token, job_id)
    assert (await running.clients.assign()).job_id == job_id
    started = await _get_job_result(running.clients.submission, token, job_id)

    assert queued.error.code == "FAILED_PRECONDITION"
    assert "QUEUED" in queued.error.description
    assert started.error.code == "FAILED_PRECONDITION"
    assert "RUNNING" in started.error.description
    assert await _status(running, token, job_id) == job_pb2.JOB_STATUS_RUNNING


async def test_success_reported_before_the_upload_is_refused_and_the_job_keeps_running(
        running: Running) -> None:
    token = running.token()
    job_id = await _submit(running, token)
    assert (await running.clients.assign()).job_id == job_id

    error = await _report(running, job_id, execution_pb2.EXECUTION_STATUS_SUCCESS)

    assert error.code == "FAILED_PRECONDITION"
    assert "upload" in error.description
    assert await _status(running, token, job_id) == job_pb2.JOB_STATUS_RUNNING


async def test_a_repeated_report_is_ok_and_a_conflicting_one_is_refused(running: Running) -> None:
    token = running.token()
    job_id = await _submit(running, token)
    assigned = await running.clients.assign()
    refused = await _report(running, job_id, execution_pb2.EXECUTION_STATUS_SUCCESS)
    await _upload(assigned.upload_target.upload_url)

    first = await _report(running, job_id, execution_pb2.EXECUTION_STATUS_SUCCESS)
    repeated = await _report(running, job_id, execution_pb2.EXECUTION_STATUS_SUCCESS)
    conflicting = await _report(running, job_id, execution_pb2.EXECUTION_STATUS_FAILURE)

    assert refused.code == "FAILED_PRECONDITION"
    assert (first.code, repeated.code) == ("", "")
    assert conflicting.code == "FAILED_PRECONDITION"
    assert "COMPLETED" in conflicting.description
    assert await _status(running, token, job_id) == job_pb2.JOB_STATUS_COMPLETED


# --- fields -------------------------------------------------------------------------------
def _n_shots(value: int) -> Callable[[pb.SubmitJobRequest], None]:
    def change(request: pb.SubmitJobRequest) -> None:
        request.job.settings.n_shots = value
    return change


def _timeout(seconds: int | None) -> Callable[[pb.SubmitJobRequest], None]:
    def change(request: pb.SubmitJobRequest) -> None:
        request.job.settings.ClearField("timeout")
        if seconds is not None:
            request.job.settings.timeout.SetInParent()
            request.job.settings.timeout.seconds = seconds
    return change


def _no_program(request: pb.SubmitJobRequest) -> None:
    request.job.ClearField("program")


def _graph_format_with_circuit_payload(request: pb.SubmitJobRequest) -> None:
    request.job.program.format = program_pb2.REPRESENTATION_FORMAT_GRAPH


@SHARED
@pytest.mark.parametrize(("change", "says"), [
    pytest.param(_n_shots(0), ["settings.n_shots", "at least 1", "got 0"], id="n_shots-zero"),
    pytest.param(_n_shots(-5), ["settings.n_shots", "at least 1", "got -5"], id="n_shots-below"),
    pytest.param(_timeout(None), ["settings.timeout", "more than 0"], id="timeout-missing"),
    pytest.param(_timeout(0), ["settings.timeout", "more than 0"], id="timeout-zero"),
    pytest.param(_no_program, ["job.program"], id="program-missing"),
    pytest.param(_graph_format_with_circuit_payload, ["job.program.format", "circuit"],
                 id="format-not-matching-payload"),
])
async def test_a_bad_field_is_invalid_argument_naming_it(
        shared: Running, change: Callable[[pb.SubmitJobRequest], None], says: list[str]) -> None:
    request = submit_request(shared.token("alice", "developer"))
    change(request)
    live = _live(shared)

    answer = await shared.clients.submission.SubmitJob(request)

    assert answer.error.code == "INVALID_ARGUMENT"
    for fragment in says:
        assert fragment in answer.error.description
    assert answer.job_id == ""
    assert _live(shared) == live


# --- roles come from the token ------------------------------------------------------------
async def test_a_role_sent_in_the_request_is_replaced_by_the_tokens(running: Running) -> None:
    request = submit_request(running.token("alice", "developer"))
    request.job.settings.role = "admin"
    assert (await running.clients.submission.SubmitJob(request)).error.code == ""

    assigned = await running.clients.assign()

    assert assigned.job.settings.role == "developer"


@SHARED
async def test_a_role_sent_in_the_request_does_not_lift_the_tokens_limits(
        shared: Running) -> None:
    # A guest may submit 1 MiB, an admin 10 MiB: the guest's token decides.
    request = submit_request(shared.token("gwen", "guest"), payload=b"\x01" * (1024 * 1024))
    request.job.settings.role = "admin"
    live = _live(shared)

    answer = await shared.clients.submission.SubmitJob(request)

    assert answer.error.code == "INVALID_ARGUMENT"
    assert "guest" in answer.error.description
    assert _live(shared) == live


async def test_shots_over_a_cap_the_operator_set_are_refused_naming_it(
        mode: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase) -> None:
    env = {"SCHEDULER_MAX_SHOTS": "1000000"}
    async with scheduler_in(mode, tmp_path, request, token_database, env) as running:
        submission = submit_request(running.token("alice", "developer"))
        _n_shots(1_000_001)(submission)
        answer = await running.clients.submission.SubmitJob(submission)
        assert answer.error.code == "INVALID_ARGUMENT"
        assert "settings.n_shots" in answer.error.description
        assert "1000000" in answer.error.description

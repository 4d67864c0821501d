"""Random and malformed requests at every RPC of both services, over real gRPC.

One standalone scheduler serves the whole module from a background thread with its own
event loop; hypothesis drives it through synchronous stubs. Every call must be answered
in-band (gRPC status OK) with no error or a refusal, never INTERNAL, and the scheduler
must still be healthy and take a valid job afterwards.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.identity import fingerprint
from pb.mqc3_cloud.scheduler.v1 import (
    execution_pb2,
    execution_pb2_grpc,
    job_pb2,
    submission_pb2,
    submission_pb2_grpc,
)
from scheduler.wiring.app import Scheduler
from scheduler.wiring.config import Config
from tests.helpers import TEST_BACKENDS_TOML, local_config, standalone_token, submit_request

T = TypeVar("T")
ALLOWED_CODES = {"", "INVALID_ARGUMENT", "UNAUTHENTICATED", "NOT_FOUND", "RESOURCE_EXHAUSTED",
                 "FAILED_PRECONDITION", "UNAVAILABLE"}
# About 150 examples in all; the two requests with the most fields get the most.
# ReportExecutionResult is fuzzed twice: with any status, and with a known status so that
# the rest of the request is read too (an unknown status is refused before anything else).
EXAMPLES = {"SubmitJob": 30, "ReportExecutionResult": 15, "ReportExecutionResult-known": 25,
            "GetJobStatus": 14, "GetJobResult": 14, "CancelJob": 14, "GetServiceStatus": 14,
            "AssignNextJob": 14, "RefreshUploadUrl": 14}
KNOWN_EXECUTION_STATUSES = [execution_pb2.EXECUTION_STATUS_SUCCESS,
                            execution_pb2.EXECUTION_STATUS_FAILURE,
                            execution_pb2.EXECUTION_STATUS_TIMEOUT]
CALL_TIMEOUT_S = 10.0
MAX_ASSIGN_WAIT_MS = 100


# --- a scheduler in a thread of its own ---------------------------------------------------
class Background:
    """A Scheduler on its own event loop in a daemon thread, driven from synchronous tests."""

    def __init__(self, config: Config) -> None:
        self.scheduler = Scheduler(config)
        self.data_dir = config.local.data_dir if config.local else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scheduler",
                                        daemon=True)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)

    def __enter__(self) -> Background:
        self._thread.start()
        self.run(self.scheduler.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.scheduler.stop(grace_s=0))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def token(self, name: str, role: str) -> str:
        assert self.data_dir is not None
        return standalone_token(self.data_dir, name, role)


def _standalone(directory: Path, env: dict[str, str]) -> Background:
    data_dir = directory / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    return Background(local_config(data_dir, env=env))


@dataclass
class Target:
    """The module's scheduler, stubs on it, and the valid values the strategies mix in."""

    background: Background
    submission: submission_pb2_grpc.SubmissionServiceStub
    execution: execution_pb2_grpc.ExecutionServiceStub
    health: list[health_pb2_grpc.HealthStub]
    tokens: list[str]
    job_ids: list[str]
    metrics_url: str


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    env = {"SCHEDULER_MAX_ASSIGN_WAIT_MS": str(MAX_ASSIGN_WAIT_MS)}
    with _standalone(tmp_path_factory.mktemp("fuzz"), env) as background:
        scheduler = background.scheduler
        channels = [grpc.insecure_channel(f"127.0.0.1:{scheduler.submission_port}"),
                    grpc.insecure_channel(f"127.0.0.1:{scheduler.execution_port}")]
        submission = submission_pb2_grpc.SubmissionServiceStub(channels[0])
        tokens = [background.token("alice", "developer"), background.token("ada", "admin"),
                  background.token("gus", "guest")]
        job_ids = [submission.SubmitJob(submit_request(token), timeout=CALL_TIMEOUT_S).job_id
                   for token in tokens[:2]]
        assert all(job_ids)
        try:
            yield Target(
                background=background,
                submission=submission,
                execution=execution_pb2_grpc.ExecutionServiceStub(channels[1]),
                health=[health_pb2_grpc.HealthStub(channel) for channel in channels],
                tokens=tokens,
                job_ids=job_ids,
                metrics_url=f"http://127.0.0.1:{scheduler.metrics_port}/metrics",
            )
        finally:
            for channel in channels:
                channel.close()


# --- strategies -------------------------------------------------------------------------------
# Protobuf strings are UTF-8: any code point but lone surrogates.
texts = st.one_of(st.text(st.characters(blacklist_categories=["Cs"]), max_size=80),
                  st.text(st.characters(blacklist_categories=["Cs"]), min_size=200,
                          max_size=3000))
int32 = st.one_of(st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31)]),
                  st.integers(-(2**31), 2**31 - 1))
int64 = st.one_of(st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 253402300800]),
                  st.integers(-(2**63), 2**63 - 1))
uint64 = st.integers(0, 2**64 - 1)
# Known values and unknown ones; Any, because the stubs type enum fields as their enum.
enum_values: st.SearchStrategy[Any] = st.one_of(st.integers(-1, 6), int32)
# gRPC metadata values are visible ASCII and spaces; the client refuses anything else.
header_values = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200),
    st.integers(-(10**30), 10**30).map(str),
)


def _metadata() -> st.SearchStrategy[list[tuple[str, str]]]:
    pairs = st.tuples(st.sampled_from(["x-mqc3-wait-ms", "x-mqc3-idempotency-key",
                                       "authorization"]), header_values)
    return st.lists(pairs, max_size=3)


def _tokens(target: Target) -> st.SearchStrategy[str]:
    references = ["sha256:" + fingerprint(t) for t in target.tokens]
    return st.one_of(st.sampled_from([*target.tokens, "", *references]), texts)


def _job_ids(target: Target) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(target.job_ids), st.uuids().map(str), texts)


backends = st.one_of(st.sampled_from(["emulator", "qpu", ""]), texts)


@st.composite
def _timestamps(draw: st.DrawFn) -> Any:
    stamps = job_pb2.JobTimestamps()
    for name in ("submitted_at", "queued_at", "dequeued_at", "compile_started_at",
                 "compile_finished_at", "execution_started_at", "execution_finished_at",
                 "finished_at"):
        if draw(st.booleans()):
            stamp = getattr(stamps, name)
            stamp.seconds = draw(st.one_of(st.integers(-(2**63), 2**63 - 1),
                                           st.integers(0, 253402300799)))
            stamp.nanos = draw(st.one_of(int32, st.integers(0, 999_999_999)))
    return stamps


def _set_path(message: Any, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for name in parents:
        message = getattr(message, name)
    setattr(message, leaf, value)


# One field of an otherwise valid submission, and what it may be replaced with.
_SUBMIT_MUTATIONS: dict[str, st.SearchStrategy[Any]] = {
    "sdk_version": texts,
    "job.program.format": enum_values,
    "job.program.circuit": st.binary(max_size=4096),
    "job.program.graph": st.binary(max_size=4096),
    "job.settings.backend": backends,
    "job.settings.n_shots": int32,
    "job.settings.timeout.seconds": int64,
    "job.settings.timeout.nanos": int32,
    "job.settings.state_save_policy": enum_values,
    "job.settings.resource_squeezing_level": st.floats(width=32),
    "job.settings.role": texts,
    "options.save_job": st.booleans(),
}


@st.composite
def _submit_job(draw: st.DrawFn, target: Target) -> Any:
    if draw(st.booleans()):  # a valid submission with one field gone wrong
        request = submit_request(draw(st.sampled_from(target.tokens)))
        path = draw(st.sampled_from(sorted(_SUBMIT_MUTATIONS)))
        _set_path(request, path, draw(_SUBMIT_MUTATIONS[path]))
        return request
    request = submission_pb2.SubmitJobRequest(token=draw(_tokens(target)),
                                              sdk_version=draw(texts))
    if draw(st.booleans()):
        request.job.SetInParent()
        if draw(st.booleans()):
            request.job.program.format = draw(enum_values)
            payload = draw(st.sampled_from([None, "circuit", "graph", "machinery"]))
            if payload is not None:
                setattr(request.job.program, payload, draw(st.binary(max_size=4096)))
        if draw(st.booleans()):
            job_settings = request.job.settings
            job_settings.SetInParent()
            job_settings.backend = draw(backends)
            job_settings.n_shots = draw(st.one_of(st.just(100), int32))
            if draw(st.booleans()):
                job_settings.timeout.seconds = draw(st.one_of(st.just(60), int64))
                job_settings.timeout.nanos = draw(int32)
            job_settings.state_save_policy = draw(enum_values)
            job_settings.resource_squeezing_level = draw(st.floats(width=32))
            job_settings.role = draw(st.one_of(st.sampled_from(["admin", "guest"]), texts))
    if draw(st.booleans()):
        request.options.save_job = draw(st.booleans())
    return request


@st.composite
def _report(draw: st.DrawFn, target: Target, known_status: bool) -> Any:
    status: Any = draw(st.sampled_from(KNOWN_EXECUTION_STATUSES) if known_status
                       else enum_values)
    request = execution_pb2.ReportExecutionResultRequest(
        job_id=draw(_job_ids(target)), status=status,
        actual_backend=draw(backends))
    if draw(st.booleans()):
        request.error.code = draw(texts)
        request.error.description = draw(texts)
    if draw(st.booleans()):
        request.uploaded_result.raw_size_bytes = draw(uint64)
        request.uploaded_result.encoded_size_bytes = draw(uint64)
    request.timestamps.CopyFrom(draw(_timestamps()))  # its fields are each optional
    if draw(st.booleans()):
        request.version.quantum_computer = draw(texts)
        request.version.physical_lab = draw(texts)
        request.version.simulator = draw(texts)
    return request


def _requests(target: Target) -> dict[str, st.SearchStrategy[Any]]:
    tokens, job_ids = _tokens(target), _job_ids(target)
    sub, ex = submission_pb2, execution_pb2
    return {
        "SubmitJob": _submit_job(target),
        "GetJobStatus": st.builds(sub.GetJobStatusRequest, token=tokens, job_id=job_ids),
        "GetJobResult": st.builds(sub.GetJobResultRequest, token=tokens, job_id=job_ids),
        "CancelJob": st.builds(sub.CancelJobRequest, token=tokens, job_id=job_ids),
        "GetServiceStatus": st.builds(sub.GetServiceStatusRequest, token=tokens,
                                      backend=backends),
        "AssignNextJob": st.builds(ex.AssignNextJobRequest, backend=backends),
        "ReportExecutionResult": _report(target, known_status=False),
        "ReportExecutionResult-known": _report(target, known_status=True),
        "RefreshUploadUrl": st.builds(ex.RefreshUploadUrlRequest, job_id=job_ids),
    }


RPCS = list(EXAMPLES)


def _method(target: Target, rpc: str) -> Callable[..., Any]:
    rpc = rpc.removesuffix("-known")
    stub = target.execution if rpc in ("AssignNextJob", "ReportExecutionResult",
                                       "RefreshUploadUrl") else target.submission
    method: Callable[..., Any] = getattr(stub, rpc)
    return method


# --- the properties ---------------------------------------------------------------------------
def _answer_in_band(target: Target, rpc: str, request: Any,
                    metadata: list[tuple[str, str]]) -> None:
    try:
        response = _method(target, rpc)(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        pytest.fail(f"{rpc} failed at the transport: {exc.code()} {exc.details()}")
    assert response.error.code in ALLOWED_CODES, (
        f"{rpc} answered {response.error.code}: {response.error.description}")


def _property(rpc: str) -> Callable[[Target], None]:
    @settings(max_examples=EXAMPLES[rpc], deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data())
    def check(target: Target, data: st.DataObject) -> None:
        request = data.draw(_requests(target)[rpc], label="request")
        metadata = data.draw(_metadata(), label="metadata")
        _answer_in_band(target, rpc, request, metadata)

    return check


@pytest.mark.parametrize("rpc", RPCS)
def test_every_request_is_answered_in_band_and_never_internal(target: Target, rpc: str) -> None:
    _property(rpc)(target)


@pytest.mark.parametrize(("field", "seconds", "nanos"), [
    ("compile_started_at", 2**62, 0),              # past year 9999
    ("execution_finished_at", -(2**40), 0),        # before year 1
    ("compile_finished_at", 1_800_000_000, -5),    # negative nanos
    ("execution_started_at", 1_800_000_000, 10**9),  # nanos of a whole second
])
def test_a_report_whose_timestamp_is_not_a_timestamp_is_refused_not_internal(
        target: Target, field: str, seconds: int, nanos: int) -> None:
    request = execution_pb2.ReportExecutionResultRequest(
        job_id=str(uuid.uuid4()), status=execution_pb2.EXECUTION_STATUS_SUCCESS)
    getattr(request.timestamps, field).seconds = seconds
    getattr(request.timestamps, field).nanos = nanos

    answer = target.execution.ReportExecutionResult(request, timeout=CALL_TIMEOUT_S)

    assert answer.error.code in ALLOWED_CODES - {""}, answer.error


def _serving(target: Target) -> list[int]:
    return [stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S).status
            for stub in target.health]


RPC_PATHS = [f"/mqc3_cloud.scheduler.v1.{service}/{rpc}" for service, rpcs in (
    ("SubmissionService", ("SubmitJob", "GetJobStatus", "GetJobResult", "CancelJob",
                           "GetServiceStatus")),
    ("ExecutionService", ("AssignNextJob", "ReportExecutionResult", "RefreshUploadUrl")),
) for rpc in rpcs]


_RESPONSES: dict[str, Any] = {
    "SubmitJob": submission_pb2.SubmitJobResponse,
    "GetJobStatus": submission_pb2.GetJobStatusResponse,
    "GetJobResult": submission_pb2.GetJobResultResponse,
    "CancelJob": submission_pb2.CancelJobResponse,
    "GetServiceStatus": submission_pb2.GetServiceStatusResponse,
    "AssignNextJob": execution_pb2.AssignNextJobResponse,
    "ReportExecutionResult": execution_pb2.ReportExecutionResultResponse,
    "RefreshUploadUrl": execution_pb2.RefreshUploadUrlResponse,
}


@pytest.mark.parametrize("path", RPC_PATHS)
def test_bytes_that_are_no_request_are_invalid_argument_in_band_on_every_rpc(
        target: Target, path: str, caplog: pytest.LogCaptureFixture) -> None:
    # A truncated field, a string that is not UTF-8, a length past the end.
    service = "Execution" if "Execution" in path else "Submission"
    port = (target.background.scheduler.execution_port if service == "Execution"
            else target.background.scheduler.submission_port)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    bodies = (b"\xff\xff\xff", b"\x0a\x02\xff\xfe", b"\x0a\x80\x80\x80\x80\x10")
    try:
        raw = channel.unary_unary(path)  # bytes in, bytes out
        for body in bodies:
            response_type = _RESPONSES[path.rsplit("/", 1)[1]]
            answer = response_type.FromString(raw(body, timeout=CALL_TIMEOUT_S)).error
            assert answer.code == "INVALID_ARGUMENT", (path, body)
            assert "not a valid" in answer.description
    finally:
        channel.close()
    # One short line per call, no traceback.
    mine = [r for r in caplog.records if "no request" in r.getMessage()]
    assert len(mine) == len(bodies)
    assert not [r for r in caplog.records if r.exc_info]
    assert _serving(target) == [health_pb2.HealthCheckResponse.SERVING] * 2


def test_unknown_backend_names_sent_by_clients_do_not_become_metric_labels(
        target: Target) -> None:
    # Each label value is a time series kept forever: a client must not be able to mint them.
    names = [f"no-such-backend-{uuid.uuid4().hex}" for _ in range(20)]
    for name in names:
        answer = target.submission.SubmitJob(submit_request(target.tokens[1], name),
                                             timeout=CALL_TIMEOUT_S)
        assert answer.error.code == "INVALID_ARGUMENT"

    exposition = requests.get(target.metrics_url, timeout=10).text

    assert "mqc3_" in exposition  # the metrics are there
    leaked = [name for name in names if name in exposition]
    assert not leaked, f"{len(leaked)} client-chosen backend names are metric labels"


@pytest.mark.parametrize(("seconds", "nanos"), [(1, -999_999_999), (0, 2_000_000_000),
                                                (-1, 999_999_999), (5, 1_000_000_000)])
def test_a_timeout_that_is_not_a_valid_duration_is_refused(target: Target, seconds: int,
                                                           nanos: int) -> None:
    # google.protobuf.Duration: |nanos| < 1e9 and nanos has the sign of seconds. Anything
    # else is not a duration, and a backend parsing the settings would choke on it.
    request = submit_request(target.tokens[1])
    request.job.settings.timeout.seconds = seconds
    request.job.settings.timeout.nanos = nanos

    answer = target.submission.SubmitJob(request, timeout=CALL_TIMEOUT_S)

    assert answer.error.code == "INVALID_ARGUMENT", answer.job_id
    assert "settings.timeout" in answer.error.description


def test_after_the_fuzzing_the_server_is_healthy_and_takes_a_valid_job(target: Target) -> None:
    # Runs after the properties above (pytest keeps a module's order).
    token = target.background.token("zoe", "developer")

    assert _serving(target) == [health_pb2.HealthCheckResponse.SERVING] * 2
    submitted = target.submission.SubmitJob(submit_request(token), timeout=CALL_TIMEOUT_S)
    assert submitted.error.code == "", submitted.error
    status = target.submission.GetJobStatus(
        submission_pb2.GetJobStatusRequest(token=token, job_id=submitted.job_id),
        timeout=CALL_TIMEOUT_S)
    assert status.error.code == ""


# --- the message size limit -------------------------------------------------------------------
MAX_MESSAGE_BYTES = 64 * 1024


def test_a_request_over_the_message_size_limit_is_resource_exhausted_and_the_server_serves_on(
        tmp_path: Path) -> None:
    env = {"SCHEDULER_SUBMISSION_MAX_MESSAGE_LENGTH": str(MAX_MESSAGE_BYTES),
           "SCHEDULER_EXECUTION_MAX_MESSAGE_LENGTH": str(MAX_MESSAGE_BYTES)}
    with _standalone(tmp_path, env) as background:
        scheduler = background.scheduler
        token = background.token("alice", "developer")
        with grpc.insecure_channel(f"127.0.0.1:{scheduler.submission_port}") as users, \
                grpc.insecure_channel(f"127.0.0.1:{scheduler.execution_port}") as nodes:
            submission = submission_pb2_grpc.SubmissionServiceStub(users)
            execution = execution_pb2_grpc.ExecutionServiceStub(nodes)
            too_big = submit_request(token, payload=b"\x00" * (MAX_MESSAGE_BYTES + 1))
            big_report = execution_pb2.ReportExecutionResultRequest(
                job_id=str(uuid.uuid4()), status=execution_pb2.EXECUTION_STATUS_FAILURE)
            big_report.error.description = "x" * (MAX_MESSAGE_BYTES + 1)

            with pytest.raises(grpc.RpcError) as submit_refused:
                submission.SubmitJob(too_big, timeout=CALL_TIMEOUT_S)
            with pytest.raises(grpc.RpcError) as report_refused:
                execution.ReportExecutionResult(big_report, timeout=CALL_TIMEOUT_S)
            fits = submission.SubmitJob(
                submit_request(token, payload=b"\x00" * (MAX_MESSAGE_BYTES // 2)),
                timeout=CALL_TIMEOUT_S)
            health = health_pb2_grpc.HealthStub(users).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S)

        assert submit_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert report_refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert fits.error.code == "", fits.error
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert background.scheduler.manager.live_jobs() == 1

"""Every value the wire allows travels a job's whole life and a restart (docs/job-rules.md,
rule 18): the largest timeouts through submission, hand-over, report, reads and restarts of
the real scheduler process in both modes; then each field of each request at its extremes.

A deadline beyond what a date can hold means no deadline: such a job is never timed out
by its declared timeout (heartbeats still watch it: tests/unit/test_nodes.py).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from message_manager import SchedulerError
from pb.mqc3_cloud.scheduler.v1 import (
    execution_pb2,
    execution_pb2_grpc,
    job_pb2,
    submission_pb2,
    submission_pb2_grpc,
)
from pb.mqc3_cloud.token_database.v1 import token_database_pb2
from pb.mqc3_scheduler.extension.v1 import jobs_pb2, jobs_pb2_grpc, nodes_pb2, nodes_pb2_grpc
from scheduler.access.auth import TokenResolver
from scheduler.wiring.standalone import open_data_directory
from tests.conftest import Running, scheduler_in
from tests.helpers import (
    UPLOAD_HEADERS,
    TokenDatabase,
    gzip_result,
    standalone_token,
    submit_request,
)
from tests.integration.processes import (
    ROOT,
    Deployment,
    ScriptProcess,
    deployment_in,
)
from tests.security.test_token_database import Served, served, token_store
from tests.unit.test_auth_cache import CountingTokens, clock, resolver, tokens

__all__ = ["clock", "resolver", "served", "token_store", "tokens"]  # fixtures, shared

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
    async with deployment_in(mode, tmp_path, request) as found:
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


# --- the sweep: each field of each request at its extremes, in both modes -------------------
# Each case names a call, the answer it must get ("" for OK, else the in-band code) and, for
# a refusal, the words of its description that name the field. No answer is ever INTERNAL
# or a transport error; afterwards every job made is still read, the service still runs a
# job through, and so does a restart.

INT64_MIN = -(2**63)
INT32_MIN = -(2**31)
UINT32_MAX = 2**32 - 1
PAST_YEAR_9999_S = 253_402_300_800  # the first second no date can hold
UNKNOWN_JOB = "0f8fad5b-d9cb-469f-a165-70867728950e"
SWEEP_ENV = {"SCHEDULER_MAX_CONCURRENT_JOBS_DEVELOPER": "100000",
             "SCHEDULER_MAX_CALL_RATE_PER_TOKEN_DEVELOPER": "100000",
             "SCHEDULER_MAX_CALLS_IN_FLIGHT_PER_TOKEN_DEVELOPER": "100000"}

# Timestamps: (name, seconds, nanos, in the past?); None: malformed (nanos out of range).
STAMPS: list[tuple[str, int, int, bool | None]] = [
    ("0", 0, 0, True),
    ("1 ns", 0, 1, True),
    ("largest nanos", 0, MAX_NANOS, True),
    ("largest seconds", INT64_MAX, MAX_NANOS, False),
    ("past the year 9999", PAST_YEAR_9999_S, 0, False),
    ("negative", -1, 0, True),
    ("-1e12 s", -10**12, 0, True),
    ("smallest seconds", INT64_MIN, 0, True),
    ("nanos of one second", 0, 10**9, None),
    ("negative nanos", 0, -1, None),
    ("largest int32 nanos", 1, INT32_MAX, None),
    ("smallest int32 nanos", 1, INT32_MIN, None),
]
# Durations (settings.timeout): (name, seconds, nanos, the field a refusal names or "").
TIMEOUTS: list[tuple[str, int, int, str]] = [
    ("0", 0, 0, "settings.timeout"),
    ("1 ns", 0, 1, ""),
    ("largest", INT64_MAX, MAX_NANOS, ""),
    ("largest seconds", INT64_MAX, 0, ""),
    ("beyond every date", BEYOND_DATES_S, 0, ""),
    ("negative", -1, 0, "settings.timeout"),
    ("smallest", INT64_MIN, -MAX_NANOS, "settings.timeout"),
    ("negative nanos", 0, -1, "settings.timeout"),
    ("mixed signs", 1, -1, "settings.timeout"),
    ("nanos of one second", 0, 10**9, "settings.timeout"),
    ("largest int32 nanos", 0, INT32_MAX, "settings.timeout"),
    ("smallest int32 nanos", 0, INT32_MIN, "settings.timeout"),
]
INT32S = [("0", 0), ("1", 1), ("largest", INT32_MAX), ("negative", -1), ("smallest", INT32_MIN)]
FLOATS = [("0", 0.0), ("smallest", 1e-45), ("largest", 3.4028235e38), ("negative", -3.4e38),
          ("infinite", float("inf")), ("-infinite", float("-inf")), ("nan", float("nan"))]
UINT64S = [("0", 0), ("1", 1), ("largest", UINT64_MAX)]
# Job ids: (name, value, the answer's code, words it names).
JOB_IDS = [("empty", "", "INVALID_ARGUMENT", "job_id"), ("one character", "0", "INVALID_ARGUMENT",
           "job_id"), ("100,000 characters", "9" * 100_000, "INVALID_ARGUMENT", "job_id"),
           ("unknown", UNKNOWN_JOB, "NOT_FOUND", UNKNOWN_JOB)]
BACKEND_STAMPS = ("compile_started_at", "compile_finished_at", "execution_started_at",
                  "execution_finished_at")
IGNORED_STAMPS = ("submitted_at", "queued_at", "dequeued_at", "finished_at")  # the scheduler's own


class Sweep:
    """One scheduler, the stubs of its four services, and the jobs the sweep made."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.alice = running.token("alice")
        self.carol = running.token("carol")  # one job, submitted first: what listings show
        self.root = running.token("root", "admin")  # the jobs nodes report on, on qpu
        self.submission = running.clients.submission
        self.execution = running.clients.execution
        self._channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in (
            running.scheduler.submission_port, running.scheduler.execution_port)]
        self.jobs = jobs_pb2_grpc.JobsServiceStub(self._channels[0])
        self.nodes = nodes_pb2_grpc.NodeServiceStub(self._channels[1])
        self.made: list[tuple[str, str]] = []  # (token, job id) of every job made

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def submit(self, request: submission_pb2.SubmitJobRequest) -> Any:
        answer = await self.submission.SubmitJob(request, timeout=RPC_TIMEOUT_S)
        if not answer.error.code:
            self.made.append((request.token, answer.job_id))
        return answer

    async def queued_job(self, token: str = "", backend: str = "emulator") -> str:
        answer = await self.submit(submit_request(token or self.alice, backend))
        assert answer.error.code == "", answer.error
        return str(answer.job_id)

    async def running_job(self) -> str:
        """A job RUNNING on the qpu backend, whose queue only this takes from."""
        job_id = await self.queued_job(self.root, "qpu")
        taken = await self.running.clients.assign("qpu")
        assert taken.job_id == job_id, (taken.error, job_id)
        return job_id

    async def report(self, **fields: Any) -> Any:
        """A FAILURE report of a fresh running job, with ``fields`` set on it."""
        report = execution_pb2.ReportExecutionResultRequest(
            job_id=await self.running_job(), status=execution_pb2.EXECUTION_STATUS_FAILURE)
        for path, value in fields.items():
            _set(report, path, value)
        return await self.execution.ReportExecutionResult(report, timeout=RPC_TIMEOUT_S)

    async def first_watch_message(self, job_id: str) -> Any:
        stream = self.jobs.WatchJob(jobs_pb2.WatchJobRequest(token=self.alice, job_id=job_id),
                                    timeout=RPC_TIMEOUT_S)
        message = await stream.read()
        stream.cancel()
        return message


def _set(message: Any, path: str, value: Any) -> None:
    """``message.<path> = value`` for a dotted path; a (seconds, nanos) pair sets a Timestamp
    or Duration field."""
    *parents, name = path.split(".")
    for parent in parents:
        message = getattr(message, parent)
    if isinstance(value, tuple):
        getattr(message, name).seconds, getattr(message, name).nanos = value
    else:
        setattr(message, name, value)


def _submission(sweep: Sweep, **fields: Any) -> submission_pb2.SubmitJobRequest:
    request = submit_request(sweep.alice)
    for path, value in fields.items():
        _set(request, path, value)
    return request


Send = Callable[[Sweep], Awaitable[Any]]


@dataclass(frozen=True)
class Case:
    """A request with one field at an extreme, and how it must be answered."""

    name: str
    send: Send
    code: str = ""  # "" OK, else the in-band code
    naming: str = ""  # words the refusal's description holds (the field it names)
    listed: int | None = None  # for an OK listing: how many of carol's jobs it holds


def _submit_cases() -> list[Case]:
    def submit(**fields: Any) -> Send:
        return lambda sweep: sweep.submit(_submission(sweep, **fields))

    cases = [Case(f"SubmitJob settings.timeout {name}", submit(**{"job.settings.timeout": (s, n)}),
                  "INVALID_ARGUMENT" if field else "", field)
             for name, s, n, field in TIMEOUTS]
    cases += [Case(f"SubmitJob settings.n_shots {name}", submit(**{"job.settings.n_shots": v}),
                   "" if v > 0 else "INVALID_ARGUMENT", "" if v > 0 else "settings.n_shots")
              for name, v in INT32S]
    known = set(job_pb2.JobStateSavePolicy.values())
    cases += [Case(f"SubmitJob settings.state_save_policy {name}",
                   submit(**{"job.settings.state_save_policy": v}),
                   "" if v in known else "INVALID_ARGUMENT",
                   "" if v in known else "settings.state_save_policy")
              for name, v in [*INT32S, ("last", max(known)), ("past the last", max(known) + 1)]]
    cases += [Case(f"SubmitJob settings.resource_squeezing_level {name}",
                   submit(**{"job.settings.resource_squeezing_level": v}))
              for name, v in FLOATS]
    cases += [Case("SubmitJob sdk_version of 64 characters", submit(sdk_version="1" * 64)),
              Case("SubmitJob sdk_version of 65 characters", submit(sdk_version="1" * 65),
                   "INVALID_ARGUMENT", "sdk_version"),
              Case("SubmitJob settings.role admin, ignored",
                   submit(**{"job.settings.role": "admin"})),
              Case("SubmitJob settings.backend empty", submit(**{"job.settings.backend": ""}),
                   "INVALID_ARGUMENT", "backend"),
              Case("SubmitJob options.save_job", submit(**{"options.save_job": True}))]
    return cases


def _job_id_cases() -> list[Case]:
    def by_id(method: str, job_id: str) -> Send:
        async def send(sweep: Sweep) -> Any:
            request = getattr(submission_pb2, f"{method}Request")(token=sweep.alice, job_id=job_id)
            return await getattr(sweep.submission, method)(request, timeout=RPC_TIMEOUT_S)
        return send

    def node_call(method: str, job_id: str) -> Send:
        async def send(sweep: Sweep) -> Any:
            if method == "Heartbeat":
                request = nodes_pb2.HeartbeatRequest(job_id=job_id)
                return await sweep.nodes.Heartbeat(request, timeout=RPC_TIMEOUT_S)
            request = execution_pb2.RefreshUploadUrlRequest(job_id=job_id)
            return await sweep.execution.RefreshUploadUrl(request, timeout=RPC_TIMEOUT_S)
        return send

    def tags(job_id: str) -> Send:
        return lambda sweep: sweep.jobs.SetJobTags(
            jobs_pb2.SetJobTagsRequest(token=sweep.alice, job_id=job_id), timeout=RPC_TIMEOUT_S)

    def watch(job_id: str) -> Send:
        return lambda sweep: sweep.first_watch_message(job_id)

    cases = []
    for name, job_id, code, naming in JOB_IDS:
        for method in ("CancelJob", "GetJobStatus", "GetJobResult"):
            cases.append(Case(f"{method} job_id {name}", by_id(method, job_id), code, naming))
        for method in ("RefreshUploadUrl", "Heartbeat"):
            cases.append(Case(f"{method} job_id {name}", node_call(method, job_id), code, naming))
        cases.append(Case(f"SetJobTags job_id {name}", tags(job_id), code, naming))
        cases.append(Case(f"WatchJob job_id {name}", watch(job_id), code, naming))
    return cases


def _execution_cases() -> list[Case]:
    def assign(backend: str, wait_ms: str | None = None) -> Send:
        metadata = (("x-mqc3-wait-ms", wait_ms),) if wait_ms is not None else None
        return lambda sweep: sweep.execution.AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend=backend), metadata=metadata, timeout=1)

    def report(**fields: Any) -> Send:
        return lambda sweep: sweep.report(**fields)

    statuses = set(execution_pb2.ExecutionStatus.values()) - {0}
    cases = [Case("AssignNextJob backend empty", assign(""), "INVALID_ARGUMENT", "backend"),
             Case("AssignNextJob x-mqc3-wait-ms 0", assign("qpu", "0")),
             Case("AssignNextJob x-mqc3-wait-ms 1", assign("qpu", "1")),
             Case("AssignNextJob x-mqc3-wait-ms of 40 digits", assign("qpu", "9" * 40)),
             Case("AssignNextJob x-mqc3-wait-ms negative", assign("qpu", "-1"),
                  "INVALID_ARGUMENT", "x-mqc3-wait-ms")]
    cases += [Case(f"ReportExecutionResult status {name}", report(status=v),
                   "" if v in statuses else "INVALID_ARGUMENT", "" if v in statuses else "status")
              for name, v in [*INT32S, ("timeout", execution_pb2.EXECUTION_STATUS_TIMEOUT),
                              ("past the last", max(statuses) + 1)] if v != 1]
    # SUCCESS (1) is held back until the result exists: the refusal names the upload.
    cases.append(Case("ReportExecutionResult status 1 before an upload",
                      report(status=execution_pb2.EXECUTION_STATUS_SUCCESS),
                      "FAILED_PRECONDITION", "upload it to the upload URL"))
    cases += [Case(f"ReportExecutionResult uploaded_result.{field} {name}",
                   report(**{f"uploaded_result.{field}": v}))
              for field in ("raw_size_bytes", "encoded_size_bytes") for name, v in UINT64S]
    for field in (*BACKEND_STAMPS, *IGNORED_STAMPS):
        for name, seconds, nanos, past in STAMPS:
            refused = past is None and field in BACKEND_STAMPS
            cases.append(Case(f"ReportExecutionResult timestamps.{field} {name}",
                              report(**{f"timestamps.{field}": (seconds, nanos)}),
                              "INVALID_ARGUMENT" if refused else "",
                              f"timestamps.{field}" if refused else ""))
    cases += [Case("ReportExecutionResult error.description of 1 MB",
                   report(**{"error.description": "x" * 1_000_000})),
              Case("ReportExecutionResult actual_backend of 257 characters",
                   report(actual_backend="q" * 257), "INVALID_ARGUMENT", "actual_backend")]
    return cases


def _listing_cases() -> list[Case]:
    def listing(**fields: Any) -> Send:
        def send(sweep: Sweep) -> Any:
            request = jobs_pb2.ListJobsRequest(token=sweep.carol)
            for path, value in fields.items():
                if path == "statuses":
                    request.statuses.append(value)
                else:
                    _set(request, path, value)
            return sweep.jobs.ListJobs(request, timeout=RPC_TIMEOUT_S)
        return send

    def usage(**fields: Any) -> Send:
        def send(sweep: Sweep) -> Any:
            request = jobs_pb2.GetUsageRequest(token=sweep.carol)
            for path, value in fields.items():
                _set(request, path, value)
            return sweep.jobs.GetUsage(request, timeout=RPC_TIMEOUT_S)
        return send

    cases = []
    for name, seconds, nanos, past in STAMPS:
        stamp = (seconds, nanos)
        if past is None:
            for field in ("submitted_from", "submitted_to"):
                cases.append(Case(f"ListJobs {field} {name}", listing(**{field: stamp}),
                                  "INVALID_ARGUMENT", field))
            for field in ("from", "to"):
                cases.append(Case(f"GetUsage {field} {name}", usage(**{field: stamp}),
                                  "INVALID_ARGUMENT", field))
            continue
        # A bound no date can hold is no bound on that side: from the past on is every job,
        # up to the past is none; from the future on is a reversed range.
        cases += [
            Case(f"ListJobs submitted_from {name}", listing(submitted_from=stamp),
                 "" if past else "INVALID_ARGUMENT", "" if past else "submitted_from",
                 listed=1 if past else None),
            Case(f"ListJobs submitted_to {name}", listing(submitted_to=stamp),
                 listed=0 if past else 1),
            Case(f"GetUsage from {name}", usage(**{"from": stamp}),
                 "" if past else "INVALID_ARGUMENT", "" if past else "from"),
            Case(f"GetUsage to {name}", usage(to=stamp)),
        ]
    widest = ((INT64_MIN, 0), (INT64_MAX, MAX_NANOS))
    cases += [Case("ListJobs from the smallest to the largest", listing(
                  submitted_from=widest[0], submitted_to=widest[1]), listed=1),
              Case("GetUsage from the smallest to the largest",
                   usage(**{"from": widest[0], "to": widest[1]}))]
    known = set(job_pb2.JobStatus.values()) - {0}
    cases += [Case(f"ListJobs statuses {name}", listing(statuses=v),
                   "" if v in known else "INVALID_ARGUMENT", "" if v in known else "statuses",
                   listed=(1 if v == job_pb2.JOB_STATUS_QUEUED else 0) if v in known else None)
              for name, v in [*INT32S, ("past the last", max(known) + 1)]]
    cases += [Case(f"ListJobs page_size {name}", listing(page_size=v),
                   "" if v <= 500 else "INVALID_ARGUMENT", "" if v <= 500 else "page_size",
                   listed=1 if v <= 500 else None)
              for name, v in [("0", 0), ("1", 1), ("500", 500), ("501", 501),
                              ("largest", UINT32_MAX)]]
    return cases


CASES = [*_submit_cases(), *_job_id_cases(), *_execution_cases(), *_listing_cases()]


def _wrong(case: Case, answer: Any) -> str | None:
    """What is wrong with ``answer`` to ``case``; None when nothing is."""
    error = answer.error
    if error.code != case.code or case.naming not in error.description:
        return (f"{case.name}: answered {error.code or 'OK'} {error.description[:200]!r}, "
                f"expected {case.code or 'OK'} naming {case.naming!r}")
    if case.listed is not None and len(answer.jobs) != case.listed:
        return f"{case.name}: listed {len(answer.jobs)} jobs, expected {case.listed}"
    return None


async def _sweep(sweep: Sweep) -> list[str]:
    problems = []
    for case in CASES:
        try:
            answer = await case.send(sweep)
        except grpc.aio.AioRpcError as exc:
            problems.append(f"{case.name}: transport {exc.code().name} {exc.details()}")
            continue
        if (wrong := _wrong(case, answer)) is not None:
            problems.append(wrong)
    return problems


async def _every_job_is_read(sweep: Sweep) -> list[str]:
    """Each job the sweep made answers its status, and its owner's listing and usage read
    them all (one page each way)."""
    problems = []
    for token, job_id in sweep.made:
        answer = await sweep.submission.GetJobStatus(
            submission_pb2.GetJobStatusRequest(token=token, job_id=job_id), timeout=RPC_TIMEOUT_S)
        if answer.error.code:
            problems.append(f"GetJobStatus of {job_id}: {answer.error.code} "
                            f"{answer.error.description[:200]}")
    listing = await sweep.jobs.ListJobs(jobs_pb2.ListJobsRequest(token=sweep.alice,
                                                                 page_size=500))
    usage = await sweep.jobs.GetUsage(jobs_pb2.GetUsageRequest(token=sweep.alice))
    for name, answer in (("ListJobs", listing), ("GetUsage", usage)):
        if answer.error.code:
            problems.append(f"{name}: {answer.error.code} {answer.error.description[:200]}")
    return problems


async def _runs_a_job_through(sweep: Sweep) -> None:
    """A fresh job: submitted, handed over, its result uploaded, reported, downloaded."""
    job_id = await sweep.queued_job(sweep.root, "qpu")
    taken = await sweep.running.clients.assign("qpu")
    assert taken.job_id == job_id, taken.error
    upload = await asyncio.to_thread(
        requests.put, taken.upload_target.upload_url, data=gzip_result(RESULT),
        headers=UPLOAD_HEADERS, timeout=RPC_TIMEOUT_S)
    assert upload.status_code < 300, upload.text
    report = await sweep.execution.ReportExecutionResult(execution_pb2.ReportExecutionResultRequest(
        job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS), timeout=RPC_TIMEOUT_S)
    assert report.error.code == "", report.error
    result = await sweep.submission.GetJobResult(
        submission_pb2.GetJobResultRequest(token=sweep.root, job_id=job_id),
        timeout=RPC_TIMEOUT_S)
    assert (result.error.code, result.status) == ("", job_pb2.JOB_STATUS_COMPLETED), result.error


async def test_each_field_at_its_extremes_is_answered_ok_or_refused_naming_it(
        mode: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase) -> None:
    async with scheduler_in(mode, tmp_path, request, token_database, SWEEP_ENV) as running:
        sweep = Sweep(running)
        try:
            await sweep.queued_job(sweep.carol)
            problems = await _sweep(sweep)
            problems += await _every_job_is_read(sweep)
            await _runs_a_job_through(sweep)
        finally:
            await sweep.close()
    assert problems == [], "\n".join(problems)
    # A restart recovers every record the sweep left, and serves on.
    async with scheduler_in(mode, tmp_path, request, token_database, SWEEP_ENV) as running:
        again = Sweep(running)
        again.made = sweep.made
        try:
            assert await _every_job_is_read(again) == []
            await _runs_a_job_through(again)
        finally:
            await again.close()


# --- the token database, and the scheduler's reading of its answers -------------------------
# expires_at of CreateToken and RenewToken: (name, seconds, nanos, what is stored: "never",
# a time, or "refused").
LATEST_S = 253_402_300_799
EXPIRIES: list[tuple[str, int, int, str]] = [
    ("2**62 s", 2**62, 0, "never"),
    ("largest", INT64_MAX, MAX_NANOS, "never"),
    ("past the year 9999", PAST_YEAR_9999_S, 0, "never"),
    ("the last microsecond of 9999", LATEST_S, MAX_NANOS, "9999-12-31T23:59:59.999999+00:00"),
    ("1 ns", 0, 1, "never"),
    ("1 s", 1, 0, "1970-01-01T00:00:01+00:00"),
    ("0", 0, 0, "never"),
    ("negative", -1, 0, "never"),
    ("smallest", INT64_MIN, 0, "never"),
    ("-1e12 s", -10**12, 0, "never"),
    ("nanos of one second", 2**62, 10**9, "refused"),
    ("negative nanos", 1, -1, "refused"),
]


def _expiry_of(info: token_database_pb2.TokenInfo) -> str:
    if not info.HasField("expires_at"):
        return "never"
    return info.expires_at.ToDatetime(tzinfo=UTC).isoformat()


@pytest.mark.parametrize(("name", "seconds", "nanos", "stored"), EXPIRIES,
                         ids=[e[0] for e in EXPIRIES])
async def test_a_token_expiry_at_any_value_the_wire_allows_is_stored_or_refused_in_band(
        served: Served, name: str, seconds: int, nanos: int, stored: str) -> None:
    stub = served.stub
    created = await stub.CreateToken(token_database_pb2.CreateTokenRequest(
        name="alice", role="developer", expires_at=Timestamp(seconds=seconds, nanos=nanos)))
    plain = await stub.CreateToken(token_database_pb2.CreateTokenRequest(
        name="bob", role="developer"))
    renewed = await stub.RenewToken(token_database_pb2.RenewTokenRequest(
        token=plain.token_info.token, expires_at=Timestamp(seconds=seconds, nanos=nanos)))
    listed = await stub.GetTokenInfoList(empty_pb2.Empty())
    assert listed.status == token_database_pb2.DATABASE_OPERATION_STATUS_OK
    if stored == "refused":
        for answer in (created, renewed):
            assert answer.status == token_database_pb2.DATABASE_OPERATION_STATUS_UNSPECIFIED
            assert answer.detail.startswith("expires_at: nanos must be from 0 to 999999999")
        # Nothing made, nothing changed.
        assert [_expiry_of(info) for info in listed.token_list] == ["never"]
        return
    for answer in (created, renewed):
        assert answer.status == token_database_pb2.DATABASE_OPERATION_STATUS_OK, answer.detail
        assert _expiry_of(answer.token_info) == stored
    for token in (created.token_info.token, plain.token_info.token):
        found = await stub.GetTokenInfo(token_database_pb2.GetTokenInfoRequest(token=token))
        assert _expiry_of(found.token_info) == stored
    assert [_expiry_of(info) for info in listed.token_list] == [stored, stored]


# What a TokenInfo's expires_at may be, from any token database: (name, seconds, nanos,
# whether the token is expired now).
SENT_EXPIRIES = [("2**62 s", 2**62, 0, False), ("largest", INT64_MAX, MAX_NANOS, False),
                 ("past the year 9999", PAST_YEAR_9999_S, 0, False),
                 ("smallest", INT64_MIN, 0, False), ("-1e12 s", -10**12, 0, False),
                 ("1 s", 1, 0, True), ("malformed nanos, in the future", 2**62, -1, False),
                 ("malformed nanos, in the past", 1, 10**9, True)]


@pytest.mark.parametrize(("name", "seconds", "nanos", "expired"), SENT_EXPIRIES,
                         ids=[e[0] for e in SENT_EXPIRIES])
async def test_a_token_whose_expiry_is_any_value_the_wire_allows_is_resolved(
        tokens: tuple[CountingTokens, grpc.aio.Server, str], resolver: TokenResolver,
        name: str, seconds: int, nanos: int, expired: bool) -> None:
    # Beyond what a date can hold (or at 0 s and before) is never; no answer is INTERNAL.
    info = token_database_pb2.TokenInfo(token="sent", name="alice", role="developer")
    info.expires_at.seconds, info.expires_at.nanos = seconds, nanos
    tokens[0].others["sent"] = info
    if expired:
        with pytest.raises(SchedulerError) as refused:
            await resolver.resolve("sent")
        assert refused.value.key == "token_expired"
        return
    for _ in range(2):  # looked up, then from the cache
        assert (await resolver.resolve("sent")).name == "alice"
    assert tokens[0].lookups == 1


@pytest.mark.parametrize("days", ["1e12", "3000000", "inf", "nan", "-1"])
@pytest.mark.parametrize("command", ["create", "renew"])
def test_an_expiry_in_days_that_names_no_date_is_refused_in_one_line_changing_nothing(
        tmp_path: Path, command: str, days: str) -> None:
    data_dir = tmp_path / "data"
    # Alice's token, made as ``tokens create`` makes it (in this process: the two commands
    # below are the test).
    open_data_directory(data_dir)
    token = standalone_token(data_dir, "alice", "developer")
    argv = (["create", "--name", "bob", "--role", "guest"] if command == "create"
            else ["renew", token])
    refused = subprocess.run(
        [sys.executable, str(ROOT / "scheduler.py"), "tokens", "--data-dir", str(data_dir),
         *argv, "--expires-in-days", days], cwd=ROOT, capture_output=True, text=True,
        timeout=30)
    assert refused.returncode == 2, refused.stderr
    last_line = refused.stderr.strip().splitlines()[-1]
    assert "error: --expires-in-days: a number of days above 0" in last_line
    listed = subprocess.run(
        [sys.executable, str(ROOT / "scheduler.py"), "tokens", "--data-dir", str(data_dir),
         "list"], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    assert [line.split("\t")[-1] for line in listed.stdout.splitlines()] == ["expires never"]

"""Users and nodes under load, for the tests that crash schedulers: what they saw (Ledger),
a job run as a node runs it, the queues drained, and every job waited on until final.

Each gRPC call goes through a ``Call``: ``once`` (one attempt, its deadline) or, in
test_replicas.py, one that behaves as the SDK does around failures.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import requests

from pb.mqc3_cloud.scheduler.v1 import (
    execution_pb2,
    execution_pb2_grpc,
    job_pb2,
    submission_pb2,
    submission_pb2_grpc,
)
from tests.helpers import UPLOAD_HEADERS, gzip_result

RESULT_RAW = b"\x0a\x06result"
RESULT_BODY = gzip_result(RESULT_RAW)
UPLOAD_TIMEOUT_S = 5.0
SETTLE_TIMEOUT_S = 30.0  # bound on waiting for every job to reach a final status
FINAL = {"JOB_STATUS_COMPLETED", "JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED",
         "JOB_STATUS_TIMEOUT"}

Metadata = Sequence[tuple[str, str]]


class Call(Protocol):
    """Make one user's or node's call of ``method`` (a stub's method): its answer, or the
    grpc.RpcError that ended it."""

    def __call__(self, method: Any, request: Any, metadata: Metadata = ()) -> Any: ...


def once(timeout_s: float) -> Call:
    """One attempt with a deadline of ``timeout_s``."""
    def call(method: Any, request: Any, metadata: Metadata = ()) -> Any:
        return method(request, metadata=metadata, timeout=timeout_s)
    return call


@dataclass
class Ledger:
    """What clients and nodes saw, shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: list[str] = field(default_factory=list)
    unknown_submissions: int = 0  # a transport error: stored or not, nobody knows
    assigned: Counter[str] = field(default_factory=Counter)
    reported: set[str] = field(default_factory=set)  # a SUCCESS report answered OK
    unexpected: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        with self.lock:
            self.unexpected.append(what)


def run_job(stub: execution_pb2_grpc.ExecutionServiceStub,
            assignment: execution_pb2.AssignNextJobResponse, ledger: Ledger,
            call: Call) -> None:
    """Upload a result and report SUCCESS; raises on transport trouble."""
    upload = requests.put(assignment.upload_target.upload_url, data=RESULT_BODY,
                          headers=UPLOAD_HEADERS, timeout=UPLOAD_TIMEOUT_S)
    if upload.status_code >= 300:
        ledger.note(f"upload of {assignment.job_id}: HTTP {upload.status_code}")
        return
    report = execution_pb2.ReportExecutionResultRequest(
        job_id=assignment.job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS)
    report.uploaded_result.raw_size_bytes = len(RESULT_RAW)
    report.uploaded_result.encoded_size_bytes = len(RESULT_BODY)
    answer = call(stub.ReportExecutionResult, report)
    if answer.error.code:
        ledger.note(f"report of {assignment.job_id}: {answer.error.code} "
                    f"{answer.error.description}")
        return
    with ledger.lock:
        ledger.reported.add(assignment.job_id)


def drain(address: str, ledger: Ledger, call: Call,
          channel_options: Sequence[tuple[str, Any]] = ()) -> int:
    """Run every job still queued, on every backend, until each queue answers empty."""
    drained = 0
    with grpc.insecure_channel(address, options=channel_options) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        for backend in ("emulator", "qpu"):
            while True:
                answer = call(stub.AssignNextJob,
                              execution_pb2.AssignNextJobRequest(backend=backend))
                assert answer.error.code == "", answer.error
                if not answer.job_id:
                    break
                with ledger.lock:
                    ledger.assigned[answer.job_id] += 1
                drained += 1
                run_job(stub, answer, ledger, call)
    return drained


def statuses(address: str, token: str, job_ids: set[str], call: Call
             ) -> dict[str, submission_pb2.GetJobStatusResponse]:
    with grpc.insecure_channel(address) as channel:
        stub = submission_pb2_grpc.SubmissionServiceStub(channel)
        return {job_id: call(stub.GetJobStatus,
                             submission_pb2.GetJobStatusRequest(token=token, job_id=job_id))
                for job_id in sorted(job_ids)}


def status_name(answer: submission_pb2.GetJobStatusResponse) -> str:
    return str(job_pb2.JobStatus.Name(answer.status))


def settle(address: str, token: str, job_ids: set[str], call: Call
           ) -> dict[str, submission_pb2.GetJobStatusResponse]:
    """Poll until no job is QUEUED or RUNNING (or the bound passes); the last answers."""
    answers = statuses(address, token, job_ids, call)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        pending = {j for j, a in answers.items()
                   if not a.error.code and status_name(a) not in FINAL}
        if not pending:
            break
        time.sleep(0.2)
        answers.update(statuses(address, token, pending, call))
    return answers


def start_threads(target: Callable[..., None], count: int,
                  *args: object) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=args, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads

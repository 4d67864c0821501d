"""Nothing lost, nothing stuck: the real scheduler process, killed and stopped under load.

Both tests run once per mode: standalone (``scheduler.py --local --data-dir``) and AWS
mode (``scheduler.py --dev --endpoint <moto>`` against the session's moto server, with a
TokenDatabaseService on loopback in this process). Everything binds to 127.0.0.1.

- ``test_every_acknowledged_job_ends_exactly_once_across_a_crash``: clients submit and
  nodes run jobs concurrently, the scheduler is SIGKILLed mid-way and restarted on the
  same data; every acknowledged job must end in a final status, no job may be handed to
  nodes twice, and every job a node received must have a record.
- ``test_sigterm_lets_in_flight_calls_finish_and_exits_zero``: SIGTERM with a node
  long-polling and submissions in flight; the process exits 0 within the grace, the node
  gets an answer, and every queued job is queued again after a restart.

Run with ``-s`` to see the crash test's summary line. The kill-and-restart test must pass
repeatedly; run the file 20 times with:

    for i in $(seq 20); do ./dev test tests/integration/test_crash_recovery.py -q || break; done
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import requests

from pb.mqc3_cloud.scheduler.v1 import execution_pb2, execution_pb2_grpc, submission_pb2_grpc
from tests.helpers import submit_request
from tests.integration.load import (
    Ledger,
    drain,
    once,
    run_job,
    settle,
    start_threads,
    status_name,
    statuses,
)
from tests.integration.processes import Deployment, deployment_in

JOB_TIMEOUT_S = 2  # short, so jobs left RUNNING by the crash time out within the test
REPORT_GRACE_S = "1"  # SCHEDULER_REPORT_GRACE_S of the restarted process
LOAD_S = 1.5  # how long clients and nodes work before the SIGKILL
CLIENTS = 4
NODES = 2
SHUTDOWN_GRACE_S = 3.0  # SCHEDULER_SHUTDOWN_GRACE_S for the SIGTERM test
EXIT_MARGIN_S = 10.0  # closing stores and the interpreter after the grace, under load
SLOW_LOOKUP_S = 1.5  # AWS mode: a token lookup held this long keeps a SubmitJob in flight
WAIT_METADATA = (("x-mqc3-wait-ms", "10000"),)
RPC_TIMEOUT_S = 5.0
CALL = once(RPC_TIMEOUT_S)
# Many jobs per token are live at once; the default quota (10 for developers) would refuse,
# and so would the token's share of calls when all of them are polled at once.
LOAD_ENV = {"SCHEDULER_MAX_CONCURRENT_JOBS_DEVELOPER": "100000",
            "SCHEDULER_MAX_CALL_RATE_PER_TOKEN_DEVELOPER": "100000"}


@pytest.fixture
async def deployment(mode: str, tmp_path: Path,
                     request: pytest.FixtureRequest) -> AsyncIterator[Deployment]:
    """Data for a scheduler in ``mode``; every process started is killed on the way out."""
    async with deployment_in(mode, tmp_path, request) as found:
        if found.token_database is not None:
            found.token_database.hold_s = SLOW_LOOKUP_S
        yield found


# --- clients and nodes -------------------------------------------------------------------

def _client(address: str, token: str, ledger: Ledger, crashing: threading.Event) -> None:
    """Submit until the scheduler goes away."""
    with grpc.insecure_channel(address) as channel:
        stub = submission_pb2_grpc.SubmissionServiceStub(channel)
        while not crashing.is_set():
            try:
                answer = stub.SubmitJob(submit_request(token, timeout_s=JOB_TIMEOUT_S),
                                        timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as exc:
                if crashing.is_set():
                    with ledger.lock:
                        ledger.unknown_submissions += 1
                else:
                    ledger.note(f"SubmitJob before the crash: {exc.code()}")
                return
            if answer.error.code:
                ledger.note(f"SubmitJob: {answer.error.code} {answer.error.description}")
                return
            with ledger.lock:
                ledger.acknowledged.append(answer.job_id)


def _node(address: str, ledger: Ledger, crashing: threading.Event) -> None:
    """Take jobs and run them until the scheduler goes away."""
    with grpc.insecure_channel(address) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        while not crashing.is_set():
            try:
                answer = stub.AssignNextJob(
                    execution_pb2.AssignNextJobRequest(backend="emulator"),
                    metadata=(("x-mqc3-wait-ms", "200"),), timeout=RPC_TIMEOUT_S)
                if answer.error.code:
                    ledger.note(f"AssignNextJob: {answer.error.code} {answer.error.description}")
                    return
                if not answer.job_id:
                    continue
                with ledger.lock:
                    ledger.assigned[answer.job_id] += 1
                run_job(stub, answer, ledger, CALL)
            except (grpc.RpcError, requests.RequestException) as exc:
                if not crashing.is_set():
                    ledger.note(f"node before the crash: {exc!r}"[:300])
                return


# --- the tests ------------------------------------------------------------------------------

def _crash_and_recover(deployment: Deployment) -> None:
    tokens = [deployment.token("alice", "developer"), deployment.token("bob", "developer")]
    admin = deployment.token("root", "admin")
    first = deployment.start("first", LOAD_ENV)
    ledger = Ledger()
    crashing = threading.Event()
    workers = [thread for i in range(CLIENTS) for thread in start_threads(
        _client, 1, first.submission_address, tokens[i % len(tokens)], ledger, crashing)]
    workers += start_threads(_node, NODES, first.execution_address, ledger, crashing)
    time.sleep(LOAD_S)
    crashing.set()  # from here on, a transport error is the crash, not a fault
    first.process.send_signal(signal.SIGKILL)
    assert first.process.wait(timeout=10) == -signal.SIGKILL
    for worker in workers:
        worker.join(timeout=RPC_TIMEOUT_S * 3)
    assert not any(w.is_alive() for w in workers), "a client or node hung after the crash"
    assigned_before = set(ledger.assigned)

    second = deployment.start("second", {**LOAD_ENV, "SCHEDULER_REPORT_GRACE_S": REPORT_GRACE_S})
    drained = drain(second.execution_address, ledger, CALL)
    acknowledged = set(ledger.acknowledged)
    assigned = set(ledger.assigned)
    answers = settle(second.submission_address, admin, acknowledged | assigned, CALL)
    summary = Counter(status_name(answers[j]) for j in acknowledged)
    print(f"\n[{deployment.mode}] acknowledged {len(acknowledged)}, "
          f"completed {summary['JOB_STATUS_COMPLETED']}, timed out {summary['JOB_STATUS_TIMEOUT']}"
          f"; unknown-outcome submissions {ledger.unknown_submissions}, assigned before the "
          f"crash {len(assigned_before)}, drained after the restart {drained}")

    context = f"\n{deployment.logs()}"
    assert ledger.unexpected == [], f"{ledger.unexpected}{context}"
    assert len(acknowledged) == len(ledger.acknowledged), "one job_id acknowledged twice"
    assert len(acknowledged) >= 10, f"too little load to prove anything{context}"
    twice = {j: n for j, n in ledger.assigned.items() if n > 1}
    assert twice == {}, f"jobs handed to nodes more than once: {twice}{context}"
    # A job no client was told about can only come from a submission the crash cut off.
    unacknowledged = assigned - acknowledged
    assert len(unacknowledged) <= ledger.unknown_submissions, f"{unacknowledged}{context}"
    unknown = {j: a.error.code for j, a in answers.items() if a.error.code}
    assert unknown == {}, f"jobs without a record (assigned or acknowledged): {unknown}{context}"
    not_final = {j: status_name(a) for j, a in answers.items()
                 if status_name(a) not in ("JOB_STATUS_COMPLETED", "JOB_STATUS_TIMEOUT")}
    assert not_final == {}, f"jobs not COMPLETED or TIMEOUT: {not_final}{context}"
    # A SUCCESS report answered OK is the job's one final status, never overwritten later.
    overwritten = {j: status_name(answers[j]) for j in ledger.reported
                   if status_name(answers[j]) != "JOB_STATUS_COMPLETED"}
    assert overwritten == {}, f"reported jobs that did not stay COMPLETED: {overwritten}{context}"
    # Only jobs a node took before the crash (or whose hand-over the crash cut) time out.
    timed_out = {j for j, a in answers.items() if status_name(a) == "JOB_STATUS_TIMEOUT"}
    assert timed_out.isdisjoint(assigned - assigned_before), context
    for job_id in timed_out:
        assert "never reported" in answers[job_id].status_detail, answers[job_id]


async def test_every_acknowledged_job_ends_exactly_once_across_a_crash(
        deployment: Deployment) -> None:
    await asyncio.to_thread(_crash_and_recover, deployment)


@dataclass
class _Submitter:
    """Submits back to back until told to stop, timing each call."""

    address: str
    token: str
    stop: threading.Event = field(default_factory=threading.Event)
    calls: list[tuple[float, float, str, str]] = field(default_factory=list)  # start, end, code, id

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = submission_pb2_grpc.SubmissionServiceStub(channel)
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    answer = stub.SubmitJob(submit_request(self.token), timeout=RPC_TIMEOUT_S)
                    code, job_id = answer.error.code or "OK", answer.job_id
                except grpc.RpcError as exc:
                    code, job_id = exc.code().name, ""
                self.calls.append((started, time.monotonic(), code, job_id))
                if code != "OK":
                    return


def _sigterm(deployment: Deployment) -> None:
    token = deployment.token("alice", "developer")
    slow_token = deployment.token("carol", "developer")
    if deployment.token_database is not None:
        deployment.token_database.slow.add(slow_token)
    first = deployment.start("first", {**LOAD_ENV,
                                       "SCHEDULER_SHUTDOWN_GRACE_S": str(SHUTDOWN_GRACE_S)})
    with grpc.insecure_channel(first.submission_address) as submission_channel, \
            grpc.insecure_channel(first.execution_address) as execution_channel:
        submission = submission_pb2_grpc.SubmissionServiceStub(submission_channel)
        execution = execution_pb2_grpc.ExecutionServiceStub(execution_channel)
        queued = [submission.SubmitJob(submit_request(token), timeout=RPC_TIMEOUT_S)
                  for _ in range(3)]
        assert [a.error.code for a in queued] == [""] * 3
        acknowledged = [a.job_id for a in queued]
        # Nothing waits on qpu, so this node stays parked until the shutdown releases it.
        waiting = execution.AssignNextJob.future(
            execution_pb2.AssignNextJobRequest(backend="qpu"), metadata=WAIT_METADATA,
            timeout=15)
        # AWS mode: its token lookup is held, so this SubmitJob is surely in flight.
        in_flight = submission.SubmitJob.future(submit_request(slow_token), timeout=10)
        submitter = _Submitter(first.submission_address, token)
        thread = threading.Thread(target=submitter.run, daemon=True)
        thread.start()
        time.sleep(0.5)
        assert not waiting.done(), "the long-polling node was answered before the SIGTERM"

        signalled = time.monotonic()
        first.process.send_signal(signal.SIGTERM)
        try:
            exit_code = first.process.wait(timeout=SHUTDOWN_GRACE_S + EXIT_MARGIN_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {SHUTDOWN_GRACE_S + EXIT_MARGIN_S} s after "
                                 f"SIGTERM\n{deployment.logs()}") from None
        took_s = time.monotonic() - signalled
        submitter.stop.set()
        thread.join(timeout=RPC_TIMEOUT_S * 2)
        assert not thread.is_alive()
        context = f"\n{deployment.logs()}"
        assert exit_code == 0, f"exit code {exit_code}{context}"

        # The parked node was answered in-band (released by the shutdown), not cut off.
        try:
            answer = waiting.result(timeout=1)
        except grpc.RpcError as exc:
            raise AssertionError(f"the long-polling node got {exc.code()}{context}") from None
        assert answer.error.code == "", answer.error
        assert answer.job_id == "", "a job came from the empty qpu queue"
        try:
            submitted = in_flight.result(timeout=1)
        except grpc.RpcError as exc:
            raise AssertionError(f"the in-flight SubmitJob got {exc.code()}{context}") from None
        assert submitted.error.code == "" and submitted.job_id, submitted
        acknowledged.append(submitted.job_id)

    # Back-to-back submissions: each either finished (OK) or was refused as the server
    # stopped taking calls; none hung or failed otherwise. A call that reaches the server
    # just as it shuts down is reset by gRPC itself before any handler runs, which the
    # client sees as CANCELLED; the drain below proves such a call made no job.
    codes = Counter(code for _, _, code, _ in submitter.calls)
    assert set(codes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, f"{codes}{context}"
    straddled = [job_id for started, ended, code, job_id in submitter.calls
                 if started < signalled < ended and code == "OK"]
    acknowledged += [job_id for _, _, code, job_id in submitter.calls if code == "OK"]
    print(f"\n[{deployment.mode}] exit 0 after {took_s:.2f} s; {len(acknowledged)} jobs "
          f"acknowledged, {len(straddled)} of them by a call under way at the SIGTERM; {codes}")
    assert took_s < SHUTDOWN_GRACE_S + EXIT_MARGIN_S

    second = deployment.start("second", LOAD_ENV)
    answers = statuses(second.submission_address, token, set(acknowledged) - {submitted.job_id},
                       CALL)
    answers.update(statuses(second.submission_address, slow_token, {submitted.job_id}, CALL))
    after = {j: a.error.code or status_name(a) for j, a in answers.items()}
    assert after == dict.fromkeys(acknowledged, "JOB_STATUS_QUEUED"), f"{after}{context}"
    # Exactly the acknowledged jobs are stored: no in-flight call was cut off after
    # storing its job, and no refused call stored one.
    ledger = Ledger()
    drain(second.execution_address, ledger, CALL)
    assert sorted(ledger.assigned.elements()) == sorted(acknowledged), context
    assert ledger.unexpected == [], ledger.unexpected
    assert second.stop(signal.SIGTERM, timeout_s=SHUTDOWN_GRACE_S + 10) == 0


async def test_sigterm_lets_in_flight_calls_finish_and_exits_zero(
        deployment: Deployment) -> None:
    await asyncio.to_thread(_sigterm, deployment)

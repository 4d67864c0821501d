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
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import requests

from common.clock import SystemClock
from pb.mqc3_cloud.scheduler.v1 import (
    execution_pb2,
    execution_pb2_grpc,
    job_pb2,
    submission_pb2,
    submission_pb2_grpc,
)
from pb.mqc3_cloud.token_database.v1 import token_database_pb2, token_database_pb2_grpc
from scheduler.standalone import token_store_path
from tests.helpers import (
    REGION,
    TEST_BACKENDS_TOML,
    UPLOAD_HEADERS,
    TokenDatabase,
    create_aws_resources,
    gzip_result,
    submit_request,
)
from tests.integration.processes import HOST, Ports, SchedulerProcess, python
from token_database.service import TokenDatabaseService, create_token
from token_database.store import SqliteTokenStore

JOB_TIMEOUT_S = 2  # short, so jobs left RUNNING by the crash time out within the test
REPORT_GRACE_S = "1"  # SCHEDULER_REPORT_GRACE_S of the restarted process
LOAD_S = 1.5  # how long clients and nodes work before the SIGKILL
CLIENTS = 4
NODES = 2
SETTLE_TIMEOUT_S = 30.0  # bound on waiting for every job to reach a final status
SHUTDOWN_GRACE_S = 3.0  # SCHEDULER_SHUTDOWN_GRACE_S for the SIGTERM test
EXIT_MARGIN_S = 2.0  # closing stores and the interpreter after the grace
SLOW_LOOKUP_S = 1.5  # AWS mode: a token lookup held this long keeps a SubmitJob in flight
WAIT_METADATA = (("x-mqc3-wait-ms", "10000"),)
RPC_TIMEOUT_S = 5.0
RESULT_RAW = b"\x0a\x06result"
RESULT_BODY = gzip_result(RESULT_RAW)
FINAL = {"JOB_STATUS_COMPLETED", "JOB_STATUS_FAILED", "JOB_STATUS_CANCELLED",
         "JOB_STATUS_TIMEOUT"}
# Many jobs per token are live at once; the default quota (10 for developers) would refuse.
LOAD_ENV = {"SCHEDULER_MAX_CONCURRENT_JOBS_DEVELOPER": "100000"}


# --- the scheduler process, in either mode -------------------------------------------------

class _SlowLookups(TokenDatabaseService):
    """Answers GetTokenInfo for the tokens in ``slow`` only after SLOW_LOOKUP_S."""

    def __init__(self, store: SqliteTokenStore, slow: set[str]) -> None:
        super().__init__(store, SystemClock())
        self._slow = slow

    async def GetTokenInfo(self, request: token_database_pb2.GetTokenInfoRequest,
                           context: grpc.aio.ServicerContext
                           ) -> token_database_pb2.GetTokenInfoResponse:
        if request.token in self._slow:
            await asyncio.sleep(SLOW_LOOKUP_S)
        return await super().GetTokenInfo(request, context)


class _TokenDatabase(TokenDatabase):
    """The helpers' TokenDatabase, with a way to hold chosen lookups (an RPC in flight)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.slow: set[str] = set()

    async def start(self) -> None:
        self.server = grpc.aio.server()
        token_database_pb2_grpc.add_TokenDatabaseServiceServicer_to_server(
            _SlowLookups(self.store, self.slow), self.server)
        port = self.server.add_insecure_port(f"{HOST}:0")
        await self.server.start()
        self.address = f"{HOST}:{port}"


class _Process(SchedulerProcess):
    """``scheduler.py`` with any flags and environment; reuses the helpers' wait and stop."""

    def __init__(self, argv: list[str], ports: Ports, log_path: Path,
                 env: dict[str, str]) -> None:
        self.data_dir = None  # type: ignore[assignment]
        self.ports = ports
        self.log_path = log_path
        self._log = log_path.open("a")
        self.process = python("scheduler.py", *argv, stdout=self._log,
                              stderr=subprocess.STDOUT, env={**os.environ, **env})


@dataclass
class Deployment:
    """One test's scheduler data (a data directory, or AWS resources on moto) and ports.

    Every start uses the same ports, so upload URLs and channels stay valid across a restart.
    """

    mode: str
    tmp_path: Path
    ports: Ports
    data_dir: Path | None = None
    aws_argv: list[str] = field(default_factory=list)
    token_database: _TokenDatabase | None = None
    started: list[_Process] = field(default_factory=list)

    def argv(self) -> list[str]:
        common = ["--host", HOST, "--port-for-submission", str(self.ports.submission),
                  "--port-for-execution", str(self.ports.execution),
                  "--metrics-port", str(self.ports.metrics)]
        if self.data_dir is not None:
            return ["--local", "--data-dir", str(self.data_dir), *common,
                    "--port-for-token-database", str(self.ports.token_database),
                    "--http-port", str(self.ports.http)]
        return [*common, *self.aws_argv]

    def start(self, name: str, env: dict[str, str] | None = None) -> _Process:
        """Start the scheduler and wait until both ports serve."""
        # A process killed holding the lease (AWS mode) leaves it to lapse before the next
        # one leads: a short lease keeps the test short; calls wait meanwhile.
        env = {"SCHEDULER_LEASE_DURATION_S": "2", "SCHEDULER_LEASE_RENEW_S": "0.5", **(env or {})}
        process = _Process(self.argv(), self.ports, self.tmp_path / f"{name}.log", env)
        self.started.append(process)
        process.wait_until_serving()
        return process

    def token(self, name: str, role: str) -> str:
        if self.token_database is not None:
            return self.token_database.token(name, role)
        assert self.data_dir is not None
        store = SqliteTokenStore(token_store_path(self.data_dir))
        try:
            return create_token(store, SystemClock(), name, role)[0]
        finally:
            store.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-6000:]}" for p in self.started)

    def kill_all(self) -> None:
        for process in self.started:
            process.kill()


@pytest.fixture
async def deployment(mode: str, tmp_path: Path,
                     request: pytest.FixtureRequest) -> AsyncIterator[Deployment]:
    """Data for a scheduler in ``mode``; every process started is killed on the way out."""
    ports = Ports.free()
    if mode == "standalone":
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
        found = Deployment(mode, tmp_path, ports, data_dir=data_dir)
        try:
            yield found
        finally:
            found.kill_all()
        return
    endpoint: str = request.getfixturevalue("moto_endpoint")
    names = create_aws_resources(endpoint, uuid.uuid4().hex[:12])
    tokens = _TokenDatabase(tmp_path / "tokens.sqlite3")
    found = Deployment(mode, tmp_path, ports, token_database=tokens)
    try:
        await tokens.start()
        found.aws_argv = [
            "--dev", "--endpoint", endpoint, "--region", REGION, "-k", "testing",
            "-s", "testing", "--job_bucket_name_key", names.bucket_key,
            "--job_table_name_key", names.table_key,
            "--backend_status_parameter_name", names.backends_key,
            "--address_to_token_database", tokens.address]
        yield found
    finally:
        found.kill_all()
        await tokens.stop()


# --- clients and nodes -------------------------------------------------------------------

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


def _run_job(stub: execution_pb2_grpc.ExecutionServiceStub,
             assignment: execution_pb2.AssignNextJobResponse, ledger: Ledger) -> None:
    """Upload a result and report SUCCESS; raises on transport trouble."""
    upload = requests.put(assignment.upload_target.upload_url, data=RESULT_BODY,
                          headers=UPLOAD_HEADERS, timeout=RPC_TIMEOUT_S)
    if upload.status_code >= 300:
        ledger.note(f"upload of {assignment.job_id}: HTTP {upload.status_code}")
        return
    report = execution_pb2.ReportExecutionResultRequest(
        job_id=assignment.job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS)
    report.uploaded_result.raw_size_bytes = len(RESULT_RAW)
    report.uploaded_result.encoded_size_bytes = len(RESULT_BODY)
    answer = stub.ReportExecutionResult(report, timeout=RPC_TIMEOUT_S)
    if answer.error.code:
        ledger.note(f"report of {assignment.job_id}: {answer.error.code} "
                    f"{answer.error.description}")
        return
    with ledger.lock:
        ledger.reported.add(assignment.job_id)


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
                _run_job(stub, answer, ledger)
            except (grpc.RpcError, requests.RequestException) as exc:
                if not crashing.is_set():
                    ledger.note(f"node before the crash: {exc!r}"[:300])
                return


def _drain(address: str, ledger: Ledger) -> int:
    """Run every job still queued, on every backend, until each queue answers empty."""
    drained = 0
    with grpc.insecure_channel(address) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        for backend in ("emulator", "qpu"):
            while True:
                answer = stub.AssignNextJob(execution_pb2.AssignNextJobRequest(backend=backend),
                                            timeout=RPC_TIMEOUT_S)
                assert answer.error.code == "", answer.error
                if not answer.job_id:
                    break
                with ledger.lock:
                    ledger.assigned[answer.job_id] += 1
                drained += 1
                _run_job(stub, answer, ledger)
    return drained


def _statuses(address: str, token: str,
              job_ids: set[str]) -> dict[str, submission_pb2.GetJobStatusResponse]:
    with grpc.insecure_channel(address) as channel:
        stub = submission_pb2_grpc.SubmissionServiceStub(channel)
        return {job_id: stub.GetJobStatus(
                    submission_pb2.GetJobStatusRequest(token=token, job_id=job_id),
                    timeout=RPC_TIMEOUT_S)
                for job_id in sorted(job_ids)}


def _name(answer: submission_pb2.GetJobStatusResponse) -> str:
    return str(job_pb2.JobStatus.Name(answer.status))


def _settle(address: str, token: str, job_ids: set[str]
            ) -> dict[str, submission_pb2.GetJobStatusResponse]:
    """Poll until no job is QUEUED or RUNNING (or the bound passes); the last answers."""
    answers = _statuses(address, token, job_ids)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        pending = {j for j, a in answers.items() if not a.error.code and _name(a) not in FINAL}
        if not pending:
            break
        time.sleep(0.2)
        answers.update(_statuses(address, token, pending))
    return answers


def _threads(target: Callable[..., None], count: int, *args: object) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=args, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


# --- the tests ------------------------------------------------------------------------------

def _crash_and_recover(deployment: Deployment) -> None:
    tokens = [deployment.token("alice", "developer"), deployment.token("bob", "developer")]
    admin = deployment.token("root", "admin")
    first = deployment.start("first", LOAD_ENV)
    ledger = Ledger()
    crashing = threading.Event()
    workers = [thread for i in range(CLIENTS) for thread in _threads(
        _client, 1, first.submission_address, tokens[i % len(tokens)], ledger, crashing)]
    workers += _threads(_node, NODES, first.execution_address, ledger, crashing)
    time.sleep(LOAD_S)
    crashing.set()  # from here on, a transport error is the crash, not a fault
    first.process.send_signal(signal.SIGKILL)
    assert first.process.wait(timeout=10) == -signal.SIGKILL
    for worker in workers:
        worker.join(timeout=RPC_TIMEOUT_S * 3)
    assert not any(w.is_alive() for w in workers), "a client or node hung after the crash"
    assigned_before = set(ledger.assigned)

    second = deployment.start("second", {**LOAD_ENV, "SCHEDULER_REPORT_GRACE_S": REPORT_GRACE_S})
    drained = _drain(second.execution_address, ledger)
    acknowledged = set(ledger.acknowledged)
    assigned = set(ledger.assigned)
    answers = _settle(second.submission_address, admin, acknowledged | assigned)
    summary = Counter(_name(answers[j]) for j in acknowledged)
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
    not_final = {j: _name(a) for j, a in answers.items()
                 if _name(a) not in ("JOB_STATUS_COMPLETED", "JOB_STATUS_TIMEOUT")}
    assert not_final == {}, f"jobs not COMPLETED or TIMEOUT: {not_final}{context}"
    # A SUCCESS report answered OK is the job's one final status, never overwritten later.
    overwritten = {j: _name(answers[j]) for j in ledger.reported
                   if _name(answers[j]) != "JOB_STATUS_COMPLETED"}
    assert overwritten == {}, f"reported jobs that did not stay COMPLETED: {overwritten}{context}"
    # Only jobs a node took before the crash (or whose hand-over the crash cut) time out.
    timed_out = {j for j, a in answers.items() if _name(a) == "JOB_STATUS_TIMEOUT"}
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

    second = deployment.start("second")
    answers = _statuses(second.submission_address, token, set(acknowledged) - {submitted.job_id})
    answers.update(_statuses(second.submission_address, slow_token, {submitted.job_id}))
    after = {j: a.error.code or _name(a) for j, a in answers.items()}
    assert after == dict.fromkeys(acknowledged, "JOB_STATUS_QUEUED"), f"{after}{context}"
    # Exactly the acknowledged jobs are stored: no in-flight call was cut off after
    # storing its job, and no refused call stored one.
    ledger = Ledger()
    _drain(second.execution_address, ledger)
    assert sorted(ledger.assigned.elements()) == sorted(acknowledged), context
    assert ledger.unexpected == [], ledger.unexpected
    assert second.stop(signal.SIGTERM, timeout_s=SHUTDOWN_GRACE_S + 10) == 0


async def test_sigterm_lets_in_flight_calls_finish_and_exits_zero(
        deployment: Deployment) -> None:
    await asyncio.to_thread(_sigterm, deployment)

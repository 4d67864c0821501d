"""Real scheduler processes: draining on signals, JSON logs, and startup failures."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from backend_manager import BackendConfigError
from common.clock import SystemClock
from job_manager.stores import StoreError
from pb.mqc3_cloud.scheduler.v1 import (
    execution_pb2,
    execution_pb2_grpc,
    submission_pb2_grpc,
)
from pb.mqc3_cloud.token_database.v1 import token_database_pb2_grpc
from scheduler.wiring.app import Scheduler
from tests.helpers import TEST_BACKENDS_TOML, AwsNames, aws_client, local_config, submit_request
from tests.integration.processes import HOST, Ports, create_token
from tests.operations.support import (
    NOT_SERVING,
    SERVING,
    WAIT_METADATA,
    Process,
    aws_args,
    check,
    healthz,
    scrape,
    standalone_args,
    until,
    until_async,
    until_serving,
    value,
)
from token_database.service import TokenDatabaseService
from token_database.service import create_token as make_token
from token_database.store import SqliteTokenStore


# --- a token database whose look-ups of one token hang until released ------------------------
class SlowTokens(TokenDatabaseService):
    """Answers like the real service, except the ``slow`` token waits for ``release``."""

    def __init__(self, store: SqliteTokenStore) -> None:
        super().__init__(store, SystemClock())
        self.slow = ""
        self.release = asyncio.Event()
        self.held = 0

    async def GetTokenInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.token == self.slow:
            self.held += 1
            await self.release.wait()
        return await super().GetTokenInfo(request, context)


@pytest.fixture
async def slow_tokens(tmp_path: Path) -> AsyncIterator[tuple[SlowTokens, str, SqliteTokenStore]]:
    store = SqliteTokenStore(tmp_path / "tokens.sqlite3")
    service = SlowTokens(store)
    service.slow = make_token(store, SystemClock(), "slowpoke", "developer")[0]
    server = grpc.aio.server()
    token_database_pb2_grpc.add_TokenDatabaseServiceServicer_to_server(service, server)
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    try:
        yield service, f"{HOST}:{port}", store
    finally:
        service.release.set()
        await server.stop(0)
        store.close()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Processes a test started; killed (if still running) at the end."""
    started: list[Process] = []
    yield started
    for process in started:
        process.close()


def _stubs(ports: Ports) -> tuple[grpc.aio.Channel, grpc.aio.Channel]:
    return (grpc.aio.insecure_channel(f"{HOST}:{ports.submission}"),
            grpc.aio.insecure_channel(f"{HOST}:{ports.execution}"))


async def _exit_code(process: Process, timeout_s: float) -> int:
    return await asyncio.to_thread(process.wait, timeout_s)


# --- drain --------------------------------------------------------------------------------------
async def test_sigterm_releases_waiting_nodes_refuses_new_calls_finishes_in_flight_and_exits_0(
    tmp_path: Path, aws_names: AwsNames, slow_tokens: tuple[SlowTokens, str, SqliteTokenStore],
    processes: list[Process],
) -> None:
    tokens, address, store = slow_tokens
    fast = make_token(store, SystemClock(), "alice", "developer")[0]
    ports = Ports.free()
    process = Process(aws_args(aws_names, address, ports), tmp_path / "stderr.log",
                      env={"SCHEDULER_SHUTDOWN_GRACE_S": "20"})
    processes.append(process)
    await until_serving(process, ports)
    sub_channel, exe_channel = _stubs(ports)
    submission = submission_pb2_grpc.SubmissionServiceStub(sub_channel)
    execution = execution_pb2_grpc.ExecutionServiceStub(exe_channel)
    try:
        queued = await submission.SubmitJob(submit_request(fast), timeout=10)
        assert queued.error.code == "", queued
        # A node long-polls the qpu, where nothing is queued.
        poll = asyncio.ensure_future(execution.AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="qpu"), metadata=WAIT_METADATA,
            timeout=15))

        async def waiting() -> bool:
            return value(await scrape(ports.metrics), "mqc3_waiting_nodes", backend="qpu") == 1

        await until_async(waiting, 5, "the node is parked in its long poll")
        # A submission is in flight: its token look-up hangs until released.
        in_flight = asyncio.ensure_future(submission.SubmitJob(submit_request(tokens.slow),
                                                               timeout=15))
        await until(lambda: tokens.held == 1, 5, "the slow submission reached the token database")

        process.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        released = await asyncio.wait_for(poll, 5)
        assert time.monotonic() - signalled < 2.0, "the waiting node was not released promptly"
        assert released.error.code == "" and released.job_id == "", released

        async def not_serving() -> bool:
            return (await healthz(ports.metrics))[0] == 503

        await until_async(not_serving, 2, "/healthz answers 503 while draining")
        try:  # gRPC health: NOT_SERVING, or the call is refused outright
            assert await check(sub_channel, "", 1) == NOT_SERVING
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
        # New calls are refused, on a connection opened before and on a new one. (In AWS
        # mode they first wait a moment for another replica to take the released lease:
        # there is none here.)
        late_calls = [asyncio.ensure_future(
            submission_pb2_grpc.SubmissionServiceStub(channel).SubmitJob(submit_request(fast),
                                                                         timeout=5))
            for channel in (sub_channel, grpc.aio.insecure_channel(f"{HOST}:{ports.submission}"))]
        assert process.alive(), "exited before its in-flight call finished"

        tokens.release.set()
        finished = await asyncio.wait_for(in_flight, 10)
        assert finished.error.code == "" and finished.job_id, finished
        for late_call in late_calls:
            try:
                late = await late_call
            except grpc.aio.AioRpcError as exc:
                assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
            else:
                assert late.error.code != "" and not late.job_id, late
        assert await _exit_code(process, 10) == 0, process.log()
        assert time.monotonic() - signalled < 8.0
    finally:
        await sub_channel.close()
        await exe_channel.close()


async def test_a_second_sigterm_during_a_long_grace_exits_at_once(
    tmp_path: Path, aws_names: AwsNames, slow_tokens: tuple[SlowTokens, str, SqliteTokenStore],
    processes: list[Process],
) -> None:
    tokens, address, _ = slow_tokens
    ports = Ports.free()
    process = Process(aws_args(aws_names, address, ports), tmp_path / "stderr.log",
                      env={"SCHEDULER_SHUTDOWN_GRACE_S": "60"})
    processes.append(process)
    await until_serving(process, ports)
    async with grpc.aio.insecure_channel(f"{HOST}:{ports.submission}") as channel:
        submission = submission_pb2_grpc.SubmissionServiceStub(channel)
        in_flight = asyncio.ensure_future(submission.SubmitJob(submit_request(tokens.slow),
                                                               timeout=15))
        try:
            await until(lambda: tokens.held == 1, 5, "the slow submission is in flight")
            process.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert process.alive(), "the first SIGTERM must drain, not exit"
            process.process.send_signal(signal.SIGTERM)
            second = time.monotonic()
            await _exit_code(process, 5)
            assert time.monotonic() - second < 1.5, "the second SIGTERM did not exit at once"
        finally:
            in_flight.cancel()
            await asyncio.gather(in_flight, return_exceptions=True)


def _standalone(tmp_path: Path, *extra: str, env: dict[str, str] | None = None,
                backends: str = TEST_BACKENDS_TOML) -> tuple[Process, Ports, Path]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "backends.toml").write_text(backends)
    ports = Ports.free()
    return Process(standalone_args(data_dir, ports, *extra), tmp_path / "stderr.log",
                   env), ports, data_dir


async def test_sigint_drains_standalone_releasing_waiting_nodes_and_exits_0(
    tmp_path: Path, processes: list[Process],
) -> None:
    process, ports, _ = _standalone(tmp_path)
    processes.append(process)
    await until_serving(process, ports)
    async with grpc.aio.insecure_channel(f"{HOST}:{ports.execution}") as channel:
        poll = asyncio.ensure_future(execution_pb2_grpc.ExecutionServiceStub(channel)
                                     .AssignNextJob(execution_pb2.AssignNextJobRequest(
                                         backend="emulator"), metadata=WAIT_METADATA,
                                         timeout=15))

        async def waiting() -> bool:
            return value(await scrape(ports.metrics), "mqc3_waiting_nodes",
                         backend="emulator") == 1

        await until_async(waiting, 5, "the node is parked in its long poll")
        process.process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        released = await asyncio.wait_for(poll, 5)
        assert released.error.code == "" and released.job_id == "", released
        assert time.monotonic() - signalled < 2.0
    assert await _exit_code(process, 10) == 0, process.log()


async def test_json_log_format_writes_every_stderr_line_as_a_json_object(
    tmp_path: Path, processes: list[Process],
) -> None:
    process, ports, data_dir = _standalone(tmp_path, "--log-format", "json")
    processes.append(process)
    token = await asyncio.to_thread(create_token, data_dir)
    await until_serving(process, ports)
    async with grpc.aio.insecure_channel(f"{HOST}:{ports.submission}") as sub, \
            grpc.aio.insecure_channel(f"{HOST}:{ports.execution}") as exe:
        submitted = await submission_pb2_grpc.SubmissionServiceStub(sub).SubmitJob(
            submit_request(token), timeout=10)
        assert submitted.error.code == "", submitted
        refused = await submission_pb2_grpc.SubmissionServiceStub(sub).SubmitJob(
            submit_request("not-a-token"), timeout=10)
        assert refused.error.code != ""
        assigned = await execution_pb2_grpc.ExecutionServiceStub(exe).AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="emulator"), timeout=10)
        assert assigned.job_id == submitted.job_id
    process.process.send_signal(signal.SIGTERM)
    assert await _exit_code(process, 10) == 0, process.log()

    lines = [line for line in process.log().splitlines() if line.strip()]
    assert lines
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON object: {line!r}\n{process.log()}") from None
        assert isinstance(entry, dict), line
        assert {"time", "level", "message"} <= entry.keys(), line
        entries.append(entry)
    messages = [e["message"] for e in entries]
    # The job's transitions are logged with its id, backend and user.
    for status in ("QUEUED", "RUNNING"):
        assert any(submitted.job_id in m and status in m and "emulator" in m and "alice" in m
                   for m in messages), (status, messages)
    assert "scheduler stopped" in messages[-1], messages


# --- startup failures ------------------------------------------------------------------------
def _assert_one_clear_line(process: Process, *names: str) -> None:
    code = process.wait(20)
    log = process.log()
    assert code != 0, log
    assert "Traceback" not in log, log
    lines = [line for line in log.splitlines() if line.strip()]
    naming = [line for line in lines if all(name in line for name in names)]
    assert len(naming) == 1, f"one line should name {names}:\n{log}"
    assert len(lines) <= 3, f"more than a couple of lines:\n{log}"


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port some other program listens on."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("flag", ["--port-for-submission", "--port-for-execution",
                                  "--metrics-port"])
def test_a_port_in_use_fails_startup_naming_the_port(
    tmp_path: Path, busy_port: int, flag: str, processes: list[Process],
) -> None:
    process, _, _ = _standalone(tmp_path, flag, str(busy_port))
    processes.append(process)
    _assert_one_clear_line(process, str(busy_port))


def test_an_unreadable_tls_certificate_fails_startup_naming_the_flag(
    tmp_path: Path, processes: list[Process],
) -> None:
    missing = tmp_path / "missing-cert.pem"
    key = tmp_path / "key.pem"
    key.write_text("not used")
    process, _, _ = _standalone(tmp_path, "--tls-cert", str(missing), "--tls-key", str(key))
    processes.append(process)
    _assert_one_clear_line(process, "--tls-cert", str(missing))


def test_an_invalid_max_queue_bytes_fails_startup_naming_the_variable(
    tmp_path: Path, processes: list[Process],
) -> None:
    process, _, _ = _standalone(tmp_path, env={"SCHEDULER_MAX_QUEUE_BYTES": "lots"})
    processes.append(process)
    _assert_one_clear_line(process, "SCHEDULER_MAX_QUEUE_BYTES", "lots")


def test_a_bad_backend_status_fails_startup_naming_the_file_and_entry(
    tmp_path: Path, processes: list[Process],
) -> None:
    process, _, _ = _standalone(tmp_path, backends=(
        '[backends.emulator.developer]\nstatus = "broken"\ndescription = "x"\n'))
    processes.append(process)
    _assert_one_clear_line(process, "backends.toml", "backends.emulator.developer.status")


def test_aws_mode_without_a_bucket_key_fails_startup_naming_the_flag(
    tmp_path: Path, aws_names: AwsNames, processes: list[Process],
) -> None:
    args = aws_args(aws_names, f"{HOST}:1", Ports.free())
    at = args.index("--job_bucket_name_key")
    del args[at:at + 2]
    process = Process(args, tmp_path / "stderr.log")
    processes.append(process)
    _assert_one_clear_line(process, "--job_bucket_name_key")


def test_aws_mode_with_a_missing_ssm_parameter_fails_startup_naming_flag_and_key(
    tmp_path: Path, aws_names: AwsNames, processes: list[Process],
) -> None:
    aws_client("ssm", aws_names.endpoint).delete_parameter(Name=aws_names.table_key)
    process = Process(aws_args(aws_names, f"{HOST}:1", Ports.free()), tmp_path / "stderr.log")
    processes.append(process)
    _assert_one_clear_line(process, "--job_table_name_key", aws_names.table_key)


async def test_a_health_watcher_sees_not_serving_on_sigterm_and_does_not_hold_the_drain(
    tmp_path: Path, processes: list[Process],
) -> None:
    # A load balancer keeps a Watch stream open; draining must tell it and not wait on it.
    grace_s = 30  # far above a drain that does not wait on the stream, even under load
    process, ports, _ = _standalone(tmp_path, env={"SCHEDULER_SHUTDOWN_GRACE_S": str(grace_s)})
    processes.append(process)
    await until_serving(process, ports)
    async with grpc.aio.insecure_channel(f"{HOST}:{ports.submission}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=3 * grace_s)
        first = await asyncio.wait_for(watch.read(), grace_s / 2)
        assert first.status == SERVING
        # The watcher has had its first status; the server's stream may not have finished
        # sending it yet. A stream whose write is still in flight when the drain begins ends
        # without NOT_SERVING (HealthServicer.Watch checks for the end before it reads the
        # status again): under load the SIGTERM was handled before the server took up the
        # stream again, and the watcher saw the stream end. A load balancer watches long
        # before a drain: wait until the server has answered a call made after that status
        # (its completions are handled in order), so the stream waits for a change.
        assert await check(channel, "", grace_s / 2) == SERVING
        process.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # Health turns once the drain's first steps are done, which under load may take
        # more than a moment: wait for the stream's next message itself, within the bound
        # the whole drain is held to below.
        flipped = await asyncio.wait_for(watch.read(), grace_s / 2)
        assert flipped is not grpc.aio.EOF and flipped.status == NOT_SERVING, flipped
        code = await _exit_code(process, grace_s + 10)
        took = time.monotonic() - signalled
        watch.cancel()
    assert code == 0, process.log()
    assert took < grace_s / 2, f"exit took {took:.1f} s: the open Watch stream held the drain"


async def test_a_start_that_fails_half_way_releases_every_port_and_store(
        tmp_path: Path) -> None:
    # The backend file is read after the stores are open and every port listens: a bad
    # one fails the start there, and all of it must be given back.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text("[backends.emulator.developer]\nstatus = 'no'\n")
    scheduler = Scheduler(local_config(data_dir))
    with pytest.raises(BackendConfigError):
        await scheduler.start()
    ports = [scheduler.submission_port, scheduler.execution_port, scheduler.metrics_port,
             scheduler.http_port, scheduler.token_database_port]
    assert all(ports), ports  # they were bound before the failure
    for port in ports:
        with socket.socket() as probe:
            probe.bind((HOST, port))  # free again
    with pytest.raises(StoreError):
        await scheduler.stack.jobs.get("00000000-0000-4000-8000-000000000001")  # closed
    await scheduler.stop()  # and stopping after a failed start is harmless


def test_a_job_store_that_cannot_be_read_fails_startup_in_one_line(
    tmp_path: Path, processes: list[Process],
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "jobs.sqlite3").write_bytes(b"this is not a database file" * 100)
    process, _, _ = _standalone(tmp_path)
    processes.append(process)
    _assert_one_clear_line(process, "cannot start", "sqlite-jobs")

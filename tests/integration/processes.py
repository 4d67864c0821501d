"""Real scheduler processes for tests: free ports, start, wait until serving, stop, clean up.

Also a test's whole deployment (Deployment): its data (a data directory, or AWS resources
on the session's moto server with a token database served in this process), and every
scheduler process started on it, in either mode, on chosen ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from benchmarks.processes import free_ports
from common.clock import SystemClock
from pb.mqc3_cloud.token_database.v1 import token_database_pb2, token_database_pb2_grpc
from scheduler.wiring.standalone import token_store_path
from tests.helpers import (
    OPEN_NODES,
    REGION,
    TEST_BACKENDS_TOML,
    TokenDatabase,
    create_aws_resources,
)
from token_database.service import TokenDatabaseService
from token_database.service import create_token as make_token
from token_database.store import SqliteTokenStore

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Ports:
    """The five ports of one standalone scheduler."""

    submission: int
    execution: int
    token_database: int
    http: int
    metrics: int

    @classmethod
    def free(cls) -> Ports:
        return cls(*free_ports(5))


def python(script: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    """Start one of the project's scripts with this test run's interpreter."""
    return subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=ROOT, text=True,
                            **kwargs)  # type: ignore[call-overload]


def create_token(data_dir: Path, name: str = "alice", role: str = "developer") -> str:
    """A standalone token made with ``scheduler.py tokens create``."""
    made = subprocess.run([sys.executable, str(ROOT / "scheduler.py"), "tokens", "--data-dir",
                           str(data_dir), "create", "--name", name, "--role", role],
                          cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    return made.stdout.strip()


class SchedulerProcess:
    """``scheduler.py --local`` on loopback, its output kept in a log file."""

    def __init__(self, data_dir: Path, ports: Ports, log_path: Path,
                 open_nodes: bool = True) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.log_path = log_path
        self._log = log_path.open("a")
        self.process = python(
            "scheduler.py", *([OPEN_NODES] if open_nodes else []),
            "--local", "--data-dir", str(data_dir), "--host", HOST,
            "--port-for-submission", str(ports.submission),
            "--port-for-execution", str(ports.execution),
            "--port-for-token-database", str(ports.token_database),
            "--http-port", str(ports.http),
            "--metrics-port", str(ports.metrics),
            stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def submission_address(self) -> str:
        return f"{HOST}:{self.ports.submission}"

    @property
    def execution_address(self) -> str:
        return f"{HOST}:{self.ports.execution}"

    def log(self) -> str:
        """Everything the process wrote so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def wait_until_serving(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Return once both gRPC ports answer; fail with the log if the process died."""
        deadline = time.monotonic() + timeout_s
        for address in (self.submission_address, self.execution_address):
            with grpc.insecure_channel(address) as channel:
                ready = grpc.channel_ready_future(channel)
                while True:
                    if self.process.poll() is not None:
                        raise AssertionError(f"scheduler exited with {self.process.returncode}:"
                                             f"\n{self.log()}")
                    try:
                        ready.result(timeout=0.2)
                        break
                    except grpc.FutureTimeoutError:
                        if time.monotonic() > deadline:
                            raise AssertionError(f"{address} not serving after {timeout_s} s:"
                                                 f"\n{self.log()}") from None

    def stop(self, signum: signal.Signals = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        """Send ``signum`` and return the exit code (negative: killed by that signal)."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"scheduler still running {timeout_s} s after "
                                 f"{signum.name}:\n{self.log()}") from None

    def kill(self) -> None:
        """Make sure the process is gone (teardown)."""
        kill(self.process)
        self._log.close()


def kill(process: subprocess.Popen[str]) -> None:
    """Kill a child process if it still runs, and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


@contextlib.contextmanager
def scheduler_process(data_dir: Path, log_path: Path,
                      open_nodes: bool = True) -> Iterator[SchedulerProcess]:
    """A serving standalone scheduler on fresh ports, killed on the way out (``open_nodes``
    False: nodes must present the data directory's node.secret)."""
    started = SchedulerProcess(data_dir, Ports.free(), log_path, open_nodes)
    try:
        started.wait_until_serving()
        yield started
    finally:
        started.kill()


class ScriptProcess(SchedulerProcess):
    """``scheduler.py`` with any flags and environment; the helpers' wait and stop."""

    def __init__(self, argv: list[str], ports: Ports, log_path: Path,
                 env: dict[str, str]) -> None:
        self.data_dir = None  # type: ignore[assignment]
        self.ports = ports
        self.log_path = log_path
        self._log = log_path.open("a")
        self.process = python("scheduler.py", *argv, stdout=self._log,
                              stderr=subprocess.STDOUT, env={**os.environ, **env})


# --- a test's deployment: its data, and the scheduler processes started on it ---------------

class HeldTokenDatabase(TokenDatabase):
    """The helpers' TokenDatabase, which answers the lookups of the tokens in ``slow`` only
    after ``hold_s`` (a way to keep a call in flight)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.slow: set[str] = set()
        self.hold_s = 1.5

    async def start(self) -> None:
        self.server = grpc.aio.server()
        token_database_pb2_grpc.add_TokenDatabaseServiceServicer_to_server(
            _HeldLookups(self), self.server)
        port = self.server.add_insecure_port(f"{HOST}:0")
        await self.server.start()
        self.address = f"{HOST}:{port}"


# A process killed holding the lease (AWS mode) leaves it to lapse before the next one
# leads: a short lease keeps tests short; calls wait meanwhile.
SHORT_LEASE_ENV = {"SCHEDULER_LEASE_DURATION_S": "2", "SCHEDULER_LEASE_RENEW_S": "0.5"}


@dataclass
class Deployment:
    """One test's scheduler data (a data directory, or AWS resources on moto) and ports.

    Every start uses ``ports`` unless told others, so upload URLs and channels stay valid
    across a restart; replicas (AWS mode) each start on their own.
    """

    mode: str
    tmp_path: Path
    ports: Ports
    data_dir: Path | None = None
    aws_argv: list[str] = field(default_factory=list)
    token_database: HeldTokenDatabase | None = None
    started: list[ScriptProcess] = field(default_factory=list)

    def argv(self, ports: Ports | None = None) -> list[str]:
        ports = ports or self.ports
        common = ["--host", HOST, "--port-for-submission", str(ports.submission),
                  "--port-for-execution", str(ports.execution),
                  "--metrics-port", str(ports.metrics)]
        if self.data_dir is not None:
            return [OPEN_NODES, "--local", "--data-dir", str(self.data_dir), *common,
                    "--port-for-token-database", str(ports.token_database),
                    "--http-port", str(ports.http)]
        return [*common, *self.aws_argv]

    def launch(self, name: str, env: dict[str, str] | None = None,
               ports: Ports | None = None) -> ScriptProcess:
        """Start the scheduler (log in ``<name>.log``) without waiting for it."""
        process = ScriptProcess(self.argv(ports), ports or self.ports,
                                self.tmp_path / f"{name}.log", {**SHORT_LEASE_ENV, **(env or {})})
        self.started.append(process)
        return process

    def start(self, name: str, env: dict[str, str] | None = None,
              ports: Ports | None = None) -> ScriptProcess:
        """Start the scheduler and wait until both ports serve."""
        process = self.launch(name, env, ports)
        process.wait_until_serving()
        return process

    def token(self, name: str, role: str) -> str:
        if self.token_database is not None:
            return self.token_database.token(name, role)
        assert self.data_dir is not None
        store = SqliteTokenStore(token_store_path(self.data_dir))
        try:
            return make_token(store, SystemClock(), name, role)[0]
        finally:
            store.close()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_path.name}\n{p.log()[-6000:]}" for p in self.started)

    def kill_all(self) -> None:
        for process in self.started:
            process.kill()


@contextlib.contextmanager
def standalone_deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A data directory with the test backends; every process started is killed at the end."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    found = Deployment("standalone", tmp_path, Ports.free(), data_dir=data_dir)
    try:
        yield found
    finally:
        found.kill_all()


@contextlib.asynccontextmanager
async def aws_deployment(tmp_path: Path, endpoint: str) -> AsyncIterator[Deployment]:
    """Fresh AWS resources on the moto server at ``endpoint`` and a token database served
    on this test's event loop (keep the loop free: run blocking test code in a thread);
    every process started is killed at the end."""
    names = create_aws_resources(endpoint, uuid.uuid4().hex[:12])
    tokens = HeldTokenDatabase(tmp_path / "tokens.sqlite3")
    found = Deployment("aws", tmp_path, Ports.free(), token_database=tokens)
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


@contextlib.asynccontextmanager
async def deployment_in(mode: str, tmp_path: Path,
                        request: pytest.FixtureRequest) -> AsyncIterator[Deployment]:
    """A deployment of ``mode`` ("standalone" or "aws", the latter on the session's moto
    server); every process started is killed at the end."""
    if mode == "standalone":
        with standalone_deployment(tmp_path) as found:
            yield found
        return
    async with aws_deployment(tmp_path, request.getfixturevalue("moto_endpoint")) as found:
        yield found


class _HeldLookups(TokenDatabaseService):
    """A HeldTokenDatabase's service: GetTokenInfo held for the tokens it holds."""

    def __init__(self, database: HeldTokenDatabase) -> None:
        super().__init__(database.store, SystemClock())
        self._database = database

    async def GetTokenInfo(self, request: token_database_pb2.GetTokenInfoRequest,
                           context: grpc.aio.ServicerContext
                           ) -> token_database_pb2.GetTokenInfoResponse:
        if request.token in self._database.slow:
            await asyncio.sleep(self._database.hold_s)
        return await super().GetTokenInfo(request, context)

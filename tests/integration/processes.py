"""Real scheduler processes for tests: free ports, start, wait until serving, stop, clean up."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from benchmarks.processes import free_ports

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

    def __init__(self, data_dir: Path, ports: Ports, log_path: Path) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.log_path = log_path
        self._log = log_path.open("a")
        self.process = python(
            "scheduler.py", "--local", "--data-dir", str(data_dir), "--host", HOST,
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
def scheduler_process(data_dir: Path, log_path: Path) -> Iterator[SchedulerProcess]:
    """A serving standalone scheduler on fresh ports, killed on the way out."""
    started = SchedulerProcess(data_dir, Ports.free(), log_path)
    try:
        started.wait_until_serving()
        yield started
    finally:
        started.kill()

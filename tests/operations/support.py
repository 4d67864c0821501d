"""Helpers for the operations tests: schedulers with chosen settings, gates, probes, scrapes.

Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from pb.mqc3_cloud.scheduler.v1 import execution_pb2, submission_pb2
from tests.conftest import Running
from tests.helpers import (
    OPEN_NODES,
    AwsNames,
    submit_request,
)
from tests.integration.processes import HOST, ROOT, Ports, kill

SUBMISSION = "mqc3_cloud.scheduler.v1.SubmissionService"
EXECUTION = "mqc3_cloud.scheduler.v1.ExecutionService"
HEALTH_NAMES = ("", SUBMISSION, EXECUTION)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WAIT_METADATA = (("x-mqc3-wait-ms", "10000"),)


class Gate:
    """Holds every call of a patched coroutine method until opened; counts who waits."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.entered = 0

    def patch(self, monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> None:
        original = getattr(owner, name)
        gate = self

        async def gated(*args: Any, **kwargs: Any) -> Any:
            gate.entered += 1
            await gate.opened.wait()
            return await original(*args, **kwargs)

        monkeypatch.setattr(owner, name, gated)

    async def until_entered(self, count: int, timeout_s: float = 5.0) -> None:
        await until(lambda: self.entered >= count, timeout_s, f"{count} calls held at the gate")

    def open(self) -> None:
        self.opened.set()


async def until(condition: Callable[[], bool], timeout_s: float, what: str,
                interval_s: float = 0.02) -> None:
    """Wait for ``condition``; fail naming ``what`` when it does not come true in time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(interval_s)


async def until_async(condition: Callable[[], Awaitable[bool]], timeout_s: float, what: str,
                      interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(interval_s)


# --- probes -----------------------------------------------------------------------------
async def check(channel: grpc.aio.Channel, service: str = "", timeout_s: float = 2.0) -> int:
    """The grpc.health.v1 status of ``service`` on ``channel``."""
    answer = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    return int(answer.status)


async def statuses(ports: tuple[int, ...]) -> dict[tuple[int, str], int]:
    """The health status of every name on every port (fresh channels)."""
    found = {}
    for port in ports:
        async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
            for name in HEALTH_NAMES:
                found[(port, name)] = await check(channel, name)
    return found


async def healthz(metrics_port: int) -> tuple[int, str]:
    """Status code and body of GET /healthz."""
    async with aiohttp.ClientSession() as session, session.get(
        f"http://{HOST}:{metrics_port}/healthz", timeout=aiohttp.ClientTimeout(total=5)
    ) as response:
        return response.status, await response.text()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(metrics_port: int) -> Samples:
    """Every sample of GET /metrics, keyed by (sample name, labels)."""
    async with aiohttp.ClientSession() as session, session.get(
        f"http://{HOST}:{metrics_port}/metrics", timeout=aiohttp.ClientTimeout(total=5)
    ) as response:
        assert response.status == 200, await response.text()
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name``'s samples whose labels include ``labels`` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def has_series(samples: Samples, name: str, **labels: str) -> bool:
    wanted = set(labels.items())
    return any(n == name and wanted <= have for (n, have) in samples)


# --- saturation ---------------------------------------------------------------------------
# No waiting room: past the workers, a call is refused at once.
SATURATION_ENV = {"SCHEDULER_SUBMISSION_MAX_WORKERS": "4",
                  "SCHEDULER_EXECUTION_MAX_WORKERS": "2",
                  "SCHEDULER_SUBMISSION_MAX_WAITING": "0",
                  "SCHEDULER_EXECUTION_MAX_WAITING": "0"}


@contextlib.asynccontextmanager
async def saturated(running: Running, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Both services full of slow calls (4 submissions, 2 assignments) until the block ends.

    Token look-ups and assignments are held at a gate. Each service's next call is
    checked to be refused in-band with RESOURCE_EXHAUSTED at once, while a report
    (which finishes work already handed out) is still answered. On the way out the
    gate opens and the held calls must all finish.
    """
    from job_manager.manager import JobManager
    from scheduler.access.auth import TokenResolver

    submissions, assignments = Gate(), Gate()
    submissions.patch(monkeypatch, TokenResolver, "resolve")
    assignments.patch(monkeypatch, JobManager, "assign")
    token = running.token("busy", "developer")
    clients = running.clients
    held = [asyncio.ensure_future(clients.submission.SubmitJob(submit_request(token), timeout=20))
            for _ in range(4)]
    held += [asyncio.ensure_future(clients.execution.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend="emulator"), timeout=20)) for _ in range(2)]
    try:
        await submissions.until_entered(4)
        await assignments.until_entered(2)
        for _ in range(3):
            started = time.perf_counter()
            refused = await clients.submission.GetServiceStatus(
                submission_pb2.GetServiceStatusRequest(token=token, backend="emulator"),
                timeout=5)
            assert refused.error.code == "RESOURCE_EXHAUSTED", refused
            assert time.perf_counter() - started < 0.5
            started = time.perf_counter()
            refused_assign = await clients.execution.AssignNextJob(
                execution_pb2.AssignNextJobRequest(backend="emulator"), timeout=5)
            assert refused_assign.error.code == "RESOURCE_EXHAUSTED", refused_assign
            assert time.perf_counter() - started < 0.5
            report = await clients.execution.ReportExecutionResult(
                execution_pb2.ReportExecutionResultRequest(
                    job_id="00000000-0000-4000-8000-000000000009",
                    status=execution_pb2.EXECUTION_STATUS_FAILURE), timeout=5)
            assert report.error.code == "NOT_FOUND", report  # answered, not refused
        assert submissions.entered == 4 and assignments.entered == 2  # refused ones never ran
        yield
    finally:
        submissions.open()
        assignments.open()
        answers = await asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), 10)
    # The held calls finish normally once their work can proceed.
    for answer in answers[:4]:
        assert not isinstance(answer, BaseException), answer
        assert answer.error.code == "" and answer.job_id, answer
    for answer in answers[4:]:
        assert not isinstance(answer, BaseException), answer
        assert answer.error.code == "", answer  # the queue was empty: an empty answer


# --- real processes -------------------------------------------------------------------------
class Process:
    """``scheduler.py`` with chosen flags and environment; stderr kept in a file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 max_open_files: int | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
        full_env.update(env or {})

        def limit_files() -> None:
            if max_open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))

        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "scheduler.py"), *args], cwd=ROOT, text=True,
            stdout=self._log, stderr=self._log, env=full_env, preexec_fn=limit_files)

    def rss_bytes(self) -> int:
        """The process's resident memory now."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kilobytes = next(line.split()[1] for line in status.splitlines()
                         if line.startswith("VmRSS:"))
        return int(kilobytes) * 1024

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"scheduler still running after {timeout_s} s:\n"
                                 f"{self.log()}") from None

    def close(self) -> None:
        kill(self.process)
        self._log.close()


def standalone_args(data_dir: Path, ports: Ports, *extra: str) -> list[str]:
    return [OPEN_NODES, "--local", "--data-dir", str(data_dir), "--host", HOST,
            "--port-for-submission", str(ports.submission),
            "--port-for-execution", str(ports.execution),
            "--port-for-token-database", str(ports.token_database),
            "--http-port", str(ports.http), "--metrics-port", str(ports.metrics), *extra]


def aws_args(names: AwsNames, token_address: str, ports: Ports, *extra: str) -> list[str]:
    return ["--host", HOST, "--dev", "--endpoint", names.endpoint, "--region", "us-east-1",
            "-k", "testing", "-s", "testing",
            "--job_bucket_name_key", names.bucket_key,
            "--job_table_name_key", names.table_key,
            "--backend_status_parameter_name", names.backends_key,
            "--address_to_token_database", token_address,
            "--port-for-submission", str(ports.submission),
            "--port-for-execution", str(ports.execution),
            "--metrics-port", str(ports.metrics), *extra]


async def until_serving(process: Process, ports: Ports, timeout_s: float = 30.0) -> None:
    """Both gRPC ports answer SERVING for every name."""
    deadline = time.monotonic() + timeout_s
    for port in (ports.submission, ports.execution):
        async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
            while True:
                if not process.alive():
                    raise AssertionError(f"scheduler exited with {process.process.returncode}:"
                                         f"\n{process.log()}")
                try:
                    if all([await check(channel, name, 0.5) == SERVING
                            for name in HEALTH_NAMES]):
                        break
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"port {port} not SERVING after {timeout_s} s:\n"
                                         f"{process.log()}")
                await asyncio.sleep(0.05)

"""Prometheus metrics at /metrics: present, and moving as a job lives, in both modes."""

from __future__ import annotations

import asyncio
import gzip
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from common.identity import Role
from message_manager.catalogue import default_catalogue
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, submission_pb2
from pb.mqc3_scheduler.extension.v1 import jobs_pb2, nodes_pb2
from tests.conftest import Running
from tests.helpers import TEST_BACKENDS_TOML, UPLOAD_HEADERS, submit_request
from tests.integration.processes import HOST, Ports
from tests.operations.support import (
    WAIT_METADATA,
    Process,
    Samples,
    has_series,
    healthz,
    scrape,
    standalone_args,
    until_async,
    until_serving,
    value,
)

EMULATOR = {"backend": "emulator"}


async def _upload(url: str, body: bytes) -> int:
    async with aiohttp.ClientSession(auto_decompress=False) as session, session.put(
        url, data=body, headers=UPLOAD_HEADERS, timeout=aiohttp.ClientTimeout(total=10)
    ) as response:
        return response.status


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_metrics_move_through_a_job_life_and_healthz_is_serving(running: Running) -> None:
    port = running.scheduler.metrics_port
    clients = running.clients
    assert await healthz(port) == (200, "SERVING\n")
    before = await scrape(port)
    # The queue gauges exist from the start, one series per backend.
    assert has_series(before, "mqc3_queue_depth_jobs", **EMULATOR)
    assert value(before, "mqc3_queue_depth_jobs", **EMULATOR) == 0
    assert value(before, "mqc3_waiting_nodes", **EMULATOR) == 0

    token = running.token("alice", "developer")
    submitted = await clients.submission.SubmitJob(submit_request(token), timeout=10)
    assert submitted.error.code == "", submitted
    # Refused: the qpu is in maintenance for developers.
    refused = await clients.submission.SubmitJob(submit_request(token, "qpu"), timeout=10)
    assert refused.error.code != "" and not refused.job_id, refused

    queued = await scrape(port)
    assert value(queued, "mqc3_queue_depth_jobs", **EMULATOR) == 1
    assert value(queued, "mqc3_queue_bytes", **EMULATOR) > 0
    assert _delta(before, queued, "mqc3_jobs_submitted_total", backend="emulator",
                  role="developer") == 1
    assert _delta(before, queued, "mqc3_jobs_refused_total", backend="qpu",
                  role="developer") == 1
    assert _delta(before, queued, "mqc3_jobs_refused_total", backend="emulator") == 0
    assert _delta(before, queued, "mqc3_rpc_seconds_count", method="SubmitJob", code="OK") == 1
    assert _delta(before, queued, "mqc3_rpc_seconds_count", method="SubmitJob") == 2
    # One token, two calls: the first looks it up, the second finds it in the cache.
    assert _delta(before, queued, "mqc3_token_cache_lookups_total", result="miss") == 1
    assert _delta(before, queued, "mqc3_token_cache_lookups_total", result="hit") == 1
    assert _delta(before, queued, "mqc3_store_call_seconds_count") > 0

    assigned = await clients.assign("emulator")
    assert assigned.job_id == submitted.job_id, assigned
    assert await _upload(assigned.upload_target.upload_url, gzip.compress(b"\x0a\x01x")) == 200
    reported = await clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(
            job_id=submitted.job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS), timeout=10)
    assert reported.error.code == "", reported

    after = await scrape(port)
    assert value(after, "mqc3_queue_depth_jobs", **EMULATOR) == 0
    assert value(after, "mqc3_queue_bytes", **EMULATOR) == 0
    assert _delta(before, after, "mqc3_jobs_finished_total", backend="emulator",
                  role="developer", outcome="COMPLETED") == 1
    assert _delta(before, after, "mqc3_job_queue_wait_seconds_count", **EMULATOR) == 1
    assert _delta(before, after, "mqc3_job_total_seconds_count", backend="emulator",
                  outcome="COMPLETED") == 1
    assert _delta(before, after, "mqc3_rpc_seconds_count", method="AssignNextJob",
                  code="OK") == 1
    assert _delta(before, after, "mqc3_rpc_seconds_count", method="ReportExecutionResult",
                  code="OK") == 1
    assert _delta(queued, after, "mqc3_store_call_seconds_count") > 0
    assert value(after, "mqc3_store_errors_total") == 0
    assert await healthz(port) == (200, "SERVING\n")


async def test_waiting_nodes_count_a_long_poll_while_it_waits(running: Running) -> None:
    port = running.scheduler.metrics_port
    clients = running.clients
    polls = [asyncio.ensure_future(clients.execution.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend="emulator"), metadata=WAIT_METADATA,
        timeout=20)) for _ in range(2)]
    try:
        async def waiting(count: int) -> bool:
            return value(await scrape(port), "mqc3_waiting_nodes", **EMULATOR) == count

        await until_async(lambda: waiting(2), 5, "mqc3_waiting_nodes{backend=emulator} == 2")
        assert value(await scrape(port), "mqc3_waiting_nodes", backend="qpu") == 0

        # A job arrives: one node takes it and stops waiting.
        token = running.token()
        submitted = await clients.submission.SubmitJob(submit_request(token), timeout=10)
        assert submitted.error.code == "", submitted
        done, _ = await asyncio.wait(polls, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        assert done.pop().result().job_id == submitted.job_id
        await until_async(lambda: waiting(1), 5, "mqc3_waiting_nodes{backend=emulator} == 1")

        # A node that hangs up stops counting too.
        for poll in polls:
            poll.cancel()
        await until_async(lambda: waiting(0), 5, "mqc3_waiting_nodes{backend=emulator} == 0")
    finally:
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)


async def test_metrics_port_answers_only_known_paths(running: Running) -> None:
    port = running.scheduler.metrics_port
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{HOST}:{port}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
        async with session.get(f"http://{HOST}:{port}/results/x") as response:
            assert response.status == 404  # results are not served on the metrics port
    for family in ("mqc3_jobs_submitted", "mqc3_jobs_refused", "mqc3_jobs_finished",
                   "mqc3_job_queue_wait_seconds", "mqc3_job_total_seconds", "mqc3_rpc_seconds",
                   "mqc3_store_call_seconds", "mqc3_store_errors", "mqc3_token_cache_lookups",
                   "mqc3_queue_depth_jobs", "mqc3_queue_bytes", "mqc3_waiting_nodes"):
        assert re.search(rf"^# TYPE {family}(_total)? ", text, re.MULTILINE), family


# --- series that exist from the start (issue 26, point 8) ------------------------------------
# rate() and increase() count from a series' first scrape: one made at its first event loses
# that event. So every series the scheduler can know of at start exists, at 0, from the start.
ROLES = [role.value for role in Role]
OUTCOMES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
SUBMISSION_REFUSALS = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE")
ADDED_BACKEND = '\n[backends.photonic.admin]\nstatus = "available"\n'


def _methods() -> list[str]:
    """Every method of both services and of the extension."""
    return [method.name for module, service in (
        (submission_pb2, "SubmissionService"), (execution_pb2, "ExecutionService"),
        (jobs_pb2, "JobsService"), (nodes_pb2, "NodeService"))
        for method in module.DESCRIPTOR.services_by_name[service].methods]


def _expected_for(backend: str) -> Iterator[tuple[str, dict[str, str]]]:
    """The series a backend has from the moment the scheduler knows it."""
    for name in ("mqc3_job_queue_wait_seconds_count", "mqc3_jobs_given_back_total",
                 "mqc3_jobs_requeued_total", "mqc3_node_timestamps_clamped_total"):
        yield name, {"backend": backend}
    yield "mqc3_job_queue_wait_seconds_bucket", {"backend": backend, "le": "+Inf"}
    for role in ROLES:
        yield "mqc3_jobs_submitted_total", {"backend": backend, "role": role}
        for code in SUBMISSION_REFUSALS:
            yield "mqc3_jobs_refused_total", {"backend": backend, "role": role, "code": code}
        for outcome in OUTCOMES:
            yield "mqc3_jobs_finished_total", {"backend": backend, "role": role,
                                               "outcome": outcome}
    for outcome in OUTCOMES:
        yield "mqc3_job_total_seconds_count", {"backend": backend, "outcome": outcome}


def _expected_at_start() -> Iterator[tuple[str, dict[str, str]]]:
    catalogue = default_catalogue()
    codes = {"OK"} | {catalogue.entry(key).code for key in catalogue.keys()}
    for method in _methods():
        for code in codes:
            yield "mqc3_rpc_seconds_count", {"method": method, "code": code}
        yield "mqc3_rpc_seconds_bucket", {"method": method, "code": "OK", "le": "+Inf"}
    for key in catalogue.keys():
        if catalogue.entry(key).code == "RESOURCE_EXHAUSTED":
            yield "mqc3_refusals_total", {"reason": key}
    for result in ("hit", "miss"):
        yield "mqc3_token_cache_lookups_total", {"result": result}
    yield "mqc3_store_errors_total", {"store": "jobs", "operation": "transition"}
    yield "mqc3_store_errors_total", {"store": "payloads", "operation": "put_input"}
    for backend in ("emulator", "qpu"):
        yield from _expected_for(backend)
    for role in ROLES:  # a submission naming no backend the scheduler knows
        for code in SUBMISSION_REFUSALS:
            yield "mqc3_jobs_refused_total", {"backend": "unknown", "role": role, "code": code}


def _missing(samples: Samples, expected: Iterator[tuple[str, dict[str, str]]]) -> list[str]:
    return [f"{name}{labels}" for name, labels in expected
            if (name, frozenset(labels.items())) not in samples]


async def test_every_series_known_at_start_is_there_before_any_call(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    backends = data_dir / "backends.toml"
    backends.write_text(TEST_BACKENDS_TOML)
    ports = Ports.free()
    process = Process(standalone_args(data_dir, ports), tmp_path / "scheduler.log",
                      {"SCHEDULER_BACKEND_RELOAD_S": "0.1"})
    try:
        await until_serving(process, ports)
        started = await scrape(ports.metrics)
        assert _missing(started, _expected_at_start()) == []
        assert value(started, "mqc3_jobs_finished_total") == 0
        assert value(started, "mqc3_rpc_seconds_count") == 0  # no call was made yet
        # A backend added at a reload has its series at once.
        backends.write_text(TEST_BACKENDS_TOML + ADDED_BACKEND)

        async def reloaded() -> bool:
            return has_series(await scrape(ports.metrics), "mqc3_queue_depth_jobs",
                              backend="photonic")

        await until_async(reloaded, 10, "the backend added to backends.toml is loaded")
        assert _missing(await scrape(ports.metrics), _expected_for("photonic")) == []
    finally:
        process.close()

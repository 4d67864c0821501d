"""Prometheus metrics at /metrics: present, and moving as a job lives, in both modes."""

from __future__ import annotations

import asyncio
import gzip
import re

import aiohttp

from pb.mqc3_cloud.scheduler.v1 import execution_pb2
from tests.conftest import Running
from tests.helpers import UPLOAD_HEADERS, submit_request
from tests.integration.processes import HOST
from tests.operations.support import (
    WAIT_METADATA,
    Samples,
    has_series,
    healthz,
    scrape,
    until_async,
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

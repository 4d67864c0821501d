"""Long-poll dispatch, queue position and quotas, over real gRPC."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2, submission_pb2
from tests.conftest import Running, scheduler_in
from tests.helpers import TokenDatabase, submit_request


async def _wait_for_job(running: Running, wait_ms: int, backend: str = "emulator"
                        ) -> tuple[execution_pb2.AssignNextJobResponse, float]:
    answer = await running.clients.execution.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend=backend),
        metadata=(("x-mqc3-wait-ms", str(wait_ms)),), timeout=30)
    return answer, time.perf_counter()


async def _until_waiting(running: Running, count: int) -> None:
    jobs = running.scheduler.manager
    assert jobs is not None
    for _ in range(200):
        if jobs.waiting_nodes("emulator") >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} nodes never started waiting")


@pytest.mark.parametrize("mode", ["standalone"])
async def test_a_waiting_node_gets_a_job_submitted_later_at_once(running: Running) -> None:
    token = running.token()
    waiting = asyncio.create_task(_wait_for_job(running, 10_000))
    await _until_waiting(running, 1)
    submitted = await running.clients.submission.SubmitJob(submit_request(token))
    acknowledged = time.perf_counter()
    answer, received = await waiting
    assert answer.job_id == submitted.job_id
    # At once, not when its wait ends (the latency itself is the benchmarks' to measure).
    assert received - acknowledged < 5.0


async def test_two_waiting_nodes_never_get_the_same_job(running: Running) -> None:
    token = running.token()
    # Waits long enough that a loaded machine still submits within them.
    nodes = [asyncio.create_task(_wait_for_job(running, 3000)) for _ in range(2)]
    await _until_waiting(running, 2)
    submitted = await running.clients.submission.SubmitJob(submit_request(token))
    answers = [answer for answer, _ in await asyncio.gather(*nodes)]
    assert sorted(a.job_id for a in answers) == ["", submitted.job_id]


async def test_many_waiting_nodes_share_many_jobs_without_doubles(running: Running) -> None:
    token = running.token("admin-user", "admin")
    nodes = [asyncio.create_task(_wait_for_job(running, 3000)) for _ in range(6)]
    await _until_waiting(running, 6)
    ids = [(await running.clients.submission.SubmitJob(submit_request(token))).job_id
           for _ in range(4)]
    received = [answer.job_id for answer, _ in await asyncio.gather(*nodes) if answer.job_id]
    assert sorted(received) == sorted(ids)


@pytest.mark.parametrize("mode", ["standalone"])
async def test_a_node_that_does_not_ask_to_wait_is_answered_at_once(running: Running) -> None:
    started = time.perf_counter()
    answer = await running.clients.assign()
    assert answer.job_id == "" and answer.error.code == ""
    assert time.perf_counter() - started < 5.0  # no wait (a wait would be the maximum's)


@pytest.mark.parametrize("mode", ["standalone"])
async def test_a_wait_ends_empty_when_no_job_comes(running: Running) -> None:
    started = time.perf_counter()
    answer, _ = await _wait_for_job(running, 200)
    assert answer.job_id == "" and answer.error.code == ""
    assert time.perf_counter() - started >= 0.19


@pytest.mark.parametrize("mode", ["standalone"])
async def test_a_malformed_wait_is_refused_in_band(running: Running) -> None:
    answer = await running.clients.execution.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend="emulator"),
        metadata=(("x-mqc3-wait-ms", "soon"),), timeout=10)
    assert answer.error.code == "INVALID_ARGUMENT"
    assert "x-mqc3-wait-ms" in answer.error.description


@pytest.mark.parametrize("mode", ["standalone"])
async def test_queue_position_is_shown_and_falls_as_jobs_leave(running: Running) -> None:
    token = running.token("admin-user", "admin")
    ids = [(await running.clients.submission.SubmitJob(submit_request(token))).job_id
           for _ in range(5)]
    details = []
    for _ in range(4):
        # Two hand-overs first, so there is a throughput to estimate from.
        await running.clients.assign()
        status = await running.clients.submission.GetJobStatus(
            submission_pb2.GetJobStatusRequest(token=token, job_id=ids[-1]))
        assert status.status == job_pb2.JOB_STATUS_QUEUED
        details.append(status.status_detail)
    positions = [int(d.split(":")[1].split()[0][:-2]) for d in details]
    assert positions == [4, 3, 2, 1]
    assert details[0].startswith("queued: 4th of 4 on emulator")
    assert all("about" in d for d in details[1:]), details


async def test_a_token_over_its_concurrent_job_limit_is_refused(running: Running) -> None:
    token = running.token("guest-user", "guest")  # guests may have 5 jobs at once
    for _ in range(5):
        assert (await running.clients.submission.SubmitJob(submit_request(token))).job_id
    refused = await running.clients.submission.SubmitJob(submit_request(token))
    assert refused.error.code == "RESOURCE_EXHAUSTED"
    assert "at most 5" in refused.error.description
    assert running.scheduler.manager.queue_length("emulator") == 5


async def test_a_job_over_the_role_size_limit_is_refused(running: Running) -> None:
    token = running.token("guest-user", "guest")  # guests may submit 1 MiB
    refused = await running.clients.submission.SubmitJob(
        submit_request(token, payload=b"\x01" * (1024 * 1024 + 1)))
    assert refused.error.code == "INVALID_ARGUMENT"
    assert str(1024 * 1024) in refused.error.description
    assert running.scheduler.manager.queue_length("emulator") == 0


async def test_a_timeout_over_a_cap_the_operator_set_names_the_range(
        mode: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase) -> None:
    env = {"SCHEDULER_MAX_TIMEOUT_S_GUEST": "300"}
    async with scheduler_in(mode, tmp_path, request, token_database, env) as running:
        token = running.token("guest-user", "guest")
        refused = await running.clients.submission.SubmitJob(
            submit_request(token, timeout_s=301))
        assert refused.error.code == "INVALID_ARGUMENT"
        assert "settings.timeout" in refused.error.description
        assert "300" in refused.error.description
        accepted = await running.clients.submission.SubmitJob(
            submit_request(token, timeout_s=300))
        assert accepted.error.code == ""


@pytest.mark.parametrize("wait", ["0x10", "-1", "", "1e3", "5 5", "9" * 400])
async def test_every_odd_wait_value_is_answered_in_band(
        wait: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase) -> None:
    env = {"SCHEDULER_MAX_ASSIGN_WAIT_MS": "100"}
    async with scheduler_in("standalone", tmp_path, request, token_database, env) as running:
        started = time.perf_counter()
        answer = await running.clients.execution.AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="emulator"),
            metadata=(("x-mqc3-wait-ms", wait),), timeout=30)
        if wait == "9" * 400:
            assert answer.error.code == "" and answer.job_id == ""
            assert time.perf_counter() - started < 5  # capped at 100 ms, not 10**397 ms
        else:
            assert answer.error.code == "INVALID_ARGUMENT", answer

"""grpc.health.v1 on both ports: start, drain, store outage and recovery, under saturation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from job_manager.manager import JobManager
from job_manager.stores import StoreError
from pb.mqc3_cloud.scheduler.v1 import submission_pb2
from scheduler.access.auth import TokenResolver
from scheduler.wiring.app import Scheduler
from tests.conftest import Running, scheduler_in
from tests.helpers import (
    TEST_BACKENDS_TOML,
    Clients,
    TokenDatabase,
    local_config,
    standalone_token,
    submit_request,
)
from tests.integration.processes import HOST
from tests.operations.support import (
    HEALTH_NAMES,
    NOT_SERVING,
    SATURATION_ENV,
    SERVING,
    Gate,
    check,
    healthz,
    saturated,
    scrape,
    statuses,
    until,
    until_async,
    value,
)


def _ports(running: Running) -> tuple[int, int]:
    return running.scheduler.submission_port, running.scheduler.execution_port


async def test_every_name_is_serving_on_both_ports_once_started(running: Running) -> None:
    found = await statuses(_ports(running))
    assert len(found) == 6
    assert set(found.values()) == {SERVING}, found
    assert await healthz(running.scheduler.metrics_port) == (200, "SERVING\n")


async def test_an_unknown_service_name_is_not_found(running: Running) -> None:
    async with grpc.aio.insecure_channel(f"{HOST}:{running.scheduler.submission_port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await check(ch, "mqc3_cloud.scheduler.v1.NoSuchService")
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


async def test_not_serving_until_recovery_has_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = Gate()
    recovery.patch(monkeypatch, JobManager, "recover")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    token = standalone_token(data_dir, "alice", "developer")
    # A call waits for recovery (as for a leader) at most SCHEDULER_LEADER_WAIT_S, within its
    # deadline, before its UNAVAILABLE: a short wait, so the refusals below come in a second.
    scheduler = Scheduler(local_config(data_dir, env={"SCHEDULER_LEADER_WAIT_S": "0.5"}))
    starting = asyncio.ensure_future(scheduler.start())
    try:
        await recovery.until_entered(1)
        # Listening, but recovery is not over: every name on both ports is NOT_SERVING.
        ports = (scheduler.submission_port, scheduler.execution_port)
        assert all(ports)
        found = await statuses(ports)
        assert set(found.values()) == {NOT_SERVING}, found
        assert (await healthz(scheduler.metrics_port))[0] == 503
        assert not starting.done()
        # Calls are turned away with UNAVAILABLE, which the SDK retries (a real user's: a
        # made-up token is refused at once, docs/replicas.md).
        clients = Clients(*ports)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await clients.submission.SubmitJob(submit_request(token), timeout=5)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await clients.assign()
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        finally:
            await clients.close()

        recovery.open()
        await asyncio.wait_for(starting, 10)
        found = await statuses(ports)
        assert set(found.values()) == {SERVING}, found
        assert await healthz(scheduler.metrics_port) == (200, "SERVING\n")
    finally:
        recovery.open()
        await asyncio.gather(starting, return_exceptions=True)
        await scheduler.stop(grace_s=0)


async def test_not_serving_once_draining_begins(running: Running) -> None:
    scheduler = running.scheduler
    async with grpc.aio.insecure_channel(f"{HOST}:{scheduler.submission_port}") as sub, \
            grpc.aio.insecure_channel(f"{HOST}:{scheduler.execution_port}") as exe:
        assert await check(sub) == SERVING
        await scheduler.health.draining()
        for channel in (sub, exe):
            for name in HEALTH_NAMES:
                assert await check(channel, name) == NOT_SERVING, name
    assert (await healthz(scheduler.metrics_port))[0] == 503


async def test_drain_reports_not_serving_while_in_flight_calls_finish(
    mode: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    token_database: TokenDatabase,
) -> None:
    async with scheduler_in(mode, tmp_path, request, token_database) as running:
        scheduler = running.scheduler
        held = Gate()
        held.patch(monkeypatch, TokenResolver, "resolve")
        token = running.token()
        in_flight = asyncio.ensure_future(
            running.clients.submission.SubmitJob(submit_request(token), timeout=20))
        await held.until_entered(1)

        stopping = asyncio.ensure_future(scheduler.stop(grace_s=10))
        try:
            await until_async(
                lambda: _healthz_is(scheduler.metrics_port, 503), 3,
                "/healthz answers 503 while draining")
            assert not scheduler.health.serving
            assert not stopping.done()  # the in-flight call holds the drain open
        finally:
            held.open()
        answer = await asyncio.wait_for(in_flight, 10)
        assert answer.error.code == "" and answer.job_id, answer
        await asyncio.wait_for(stopping, 10)


async def _healthz_is(port: int, status: int) -> bool:
    try:
        return (await healthz(port))[0] == status
    except OSError:
        return False


async def test_store_outage_turns_health_not_serving_and_recovery_turns_it_back(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    token_database: TokenDatabase,
) -> None:
    env = {"SCHEDULER_STORE_UNHEALTHY_AFTER_S": "1"}
    async with scheduler_in("standalone", tmp_path, request, token_database, env) as running:
        scheduler = running.scheduler
        jobs = scheduler.stack.jobs
        ports = _ports(running)
        token = running.token()
        errors_before = value(await scrape(scheduler.metrics_port), "mqc3_store_errors_total")

        async def unreachable(job_id: str) -> None:
            raise StoreError("the job store is unreachable (test)")

        # Nothing calls the store: the health loop's own probe must notice the outage.
        monkeypatch.setattr(jobs, "get", unreachable, raising=False)
        broken_at = time.monotonic()
        await until(lambda: not scheduler.health.serving,
                    8, "health NOT_SERVING after the store failed for more than 1 s")
        assert time.monotonic() - broken_at >= 1.0  # not before the configured time
        found = await statuses(ports)
        assert set(found.values()) == {NOT_SERVING}, found
        assert (await healthz(scheduler.metrics_port))[0] == 503
        after = await scrape(scheduler.metrics_port)
        assert value(after, "mqc3_store_errors_total", store="jobs") > errors_before

        # The store comes back; the next store call succeeds and health follows.
        monkeypatch.undo()
        status = await running.clients.submission.GetJobStatus(submission_pb2.GetJobStatusRequest(
            token=token, job_id="00000000-0000-4000-8000-0000000000aa"))
        assert status.error.code == "NOT_FOUND", status
        await until(lambda: scheduler.health.serving,
                    3, "health SERVING again after the store recovered")
        found = await statuses(ports)
        assert set(found.values()) == {SERVING}, found
        assert await healthz(scheduler.metrics_port) == (200, "SERVING\n")


async def test_failing_writes_turn_health_not_serving_though_reads_succeed(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    token_database: TokenDatabase,
) -> None:
    # A read-only or full disk: every payload write fails, every read still works.
    env = {"SCHEDULER_STORE_UNHEALTHY_AFTER_S": "1"}
    async with scheduler_in("standalone", tmp_path, request, token_database, env) as running:
        scheduler = running.scheduler
        payloads = scheduler.stack.payloads
        token = running.token()

        async def disk_full(*args: object) -> None:
            raise StoreError("no space left on device (test)")

        # Standalone stores a submission's program with its record (create_with_input).
        for write in ("put_input", "create_with_input"):
            monkeypatch.setattr(payloads, write, disk_full, raising=False)
        refused = await running.clients.submission.SubmitJob(submit_request(token))
        assert refused.error.code == "INTERNAL"

        async def polls() -> None:  # reads keep succeeding all along
            while True:
                await running.clients.submission.GetJobStatus(submission_pb2.GetJobStatusRequest(
                    token=token, job_id="00000000-0000-4000-8000-0000000000aa"))
                await asyncio.sleep(0.05)

        reader = asyncio.create_task(polls())
        try:
            await until(lambda: not scheduler.health.serving,
                        8, "health NOT_SERVING while writes fail and reads succeed")
            assert (await healthz(scheduler.metrics_port))[0] == 503
            monkeypatch.undo()  # the disk has room again: the probe's write shows it
            await until(lambda: scheduler.health.serving,
                        8, "health SERVING again once writes succeed")
        finally:
            reader.cancel()
        accepted = await running.clients.submission.SubmitJob(submit_request(token))
        assert accepted.error.code == ""


async def test_health_answers_at_once_while_both_services_are_saturated(
    mode: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    token_database: TokenDatabase,
) -> None:
    async with scheduler_in(mode, tmp_path, request, token_database, SATURATION_ENV) as running:
        ports = _ports(running)
        channels = [grpc.aio.insecure_channel(f"{HOST}:{port}") for port in ports]
        try:
            for channel in channels:  # connected before the load begins
                assert await check(channel) == SERVING
            async with saturated(running, monkeypatch):
                slowest = 0.0
                for _ in range(10):
                    for channel in channels:
                        for name in HEALTH_NAMES:
                            started = time.perf_counter()
                            assert await check(channel, name) == SERVING
                            slowest = max(slowest, time.perf_counter() - started)
                # A check queued behind the held calls would wait for the block's end (the
                # calls are held at a gate until then): 2 s tells that apart even on a loaded
                # machine. How fast health answers is the benchmarks' to measure, not this.
                assert slowest < 2.0, f"slowest health check took {slowest * 1000:.0f} ms"
                # A new connection is answered too.
                found = await statuses(ports)
                assert set(found.values()) == {SERVING}, found
        finally:
            for channel in channels:
                await channel.close()


async def test_overload_is_refused_at_once_and_nothing_deadlocks(
    mode: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    token_database: TokenDatabase,
) -> None:
    async with scheduler_in(mode, tmp_path, request, token_database, SATURATION_ENV) as running:
        async with saturated(running, monkeypatch):
            pass  # refusals checked inside; held calls checked to finish on the way out
        # Every slot was given back: a full service's worth of calls is admitted again.
        token = running.token("after", "developer")
        answers = await asyncio.gather(*(running.clients.submission.GetServiceStatus(
            submission_pb2.GetServiceStatusRequest(token=token, backend="emulator"), timeout=5)
            for _ in range(4)))
        assert [a.error.code for a in answers] == [""] * 4
        samples = await scrape(running.scheduler.metrics_port)
        assert value(samples, "mqc3_rpc_seconds_count", method="GetServiceStatus",
                     code="RESOURCE_EXHAUSTED") == 3
        assert value(samples, "mqc3_rpc_seconds_count", method="AssignNextJob",
                     code="RESOURCE_EXHAUSTED") == 3


async def test_past_the_workers_calls_wait_their_turn_and_past_the_waiting_room_are_refused(
    mode: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    token_database: TokenDatabase,
) -> None:
    # One worker and room for one waiting call (docs/errors.md, "Calls in progress").
    env = {"SCHEDULER_SUBMISSION_MAX_WORKERS": "1", "SCHEDULER_SUBMISSION_MAX_WAITING": "1"}
    async with scheduler_in(mode, tmp_path, request, token_database, env) as running:
        gate = Gate()
        gate.patch(monkeypatch, TokenResolver, "resolve")
        token = running.token("busy", "developer")
        submission = running.clients.submission
        held = asyncio.ensure_future(submission.SubmitJob(submit_request(token), timeout=20))
        await gate.until_entered(1)
        waits = asyncio.ensure_future(submission.SubmitJob(submit_request(token), timeout=20))

        async def one_waiting() -> bool:
            samples = await scrape(running.scheduler.metrics_port)
            return value(samples, "mqc3_calls_waiting_for_slot", port="submission") == 1

        await until_async(one_waiting, 5, "a call waiting for the worker")
        assert gate.entered == 1  # it waits before any work
        refused = await submission.GetServiceStatus(
            submission_pb2.GetServiceStatusRequest(token=token, backend="emulator"), timeout=5)
        assert refused.error.code == "RESOURCE_EXHAUSTED"
        assert "[reason=overloaded " in refused.error.description
        gate.open()
        answers = await asyncio.gather(held, waits)
        assert [a.error.code for a in answers] == ["", ""] and all(a.job_id for a in answers)
        samples = await scrape(running.scheduler.metrics_port)
        assert value(samples, "mqc3_calls_waiting_for_slot", port="submission") == 0

"""Bookings, sessions and budgets across a restart of the scheduler, over real gRPC in both
modes: they live in the job store (SQLite or DynamoDB), and the next process enforces them
as the last one did (docs/job-rules.md, rule 4).

The scheduler is stopped and a new one started on the same data directory, or the same
table and bucket, as tests/integration/test_replica_routing.py's replicas do in one
process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from pb.mqc3_cloud.scheduler.v1 import submission_pb2
from pb.mqc3_scheduler.extension.v1 import jobs_pb2, jobs_pb2_grpc, reservations_pb2_grpc
from pb.mqc3_scheduler.extension.v1 import reservations_pb2 as pb
from scheduler.messages import convert
from tests.conftest import Running, scheduler_in
from tests.helpers import TokenDatabase, submit_request
from tests.integration.test_reservations import detail, submit, take

Stub = reservations_pb2_grpc.ReservationsServiceStub


@contextlib.asynccontextmanager
async def reservations_of(running: Running) -> AsyncIterator[Stub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.submission_port}")
    try:
        yield reservations_pb2_grpc.ReservationsServiceStub(channel)
    finally:
        await channel.close()


async def begun(stub: Stub, token: str) -> pb.Session:
    """The caller's one session, once its first job's hand-over has marked it begun."""
    for _ in range(200):
        [session] = (await stub.ListSessions(pb.ListSessionsRequest(token=token))).sessions
        if session.HasField("started_at"):
            return session
        await asyncio.sleep(0.02)
    raise AssertionError("the session never began")


async def test_bookings_and_a_begun_session_are_enforced_after_a_restart(
        mode: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase) -> None:
    async with scheduler_in(mode, tmp_path, request, token_database) as running, \
            reservations_of(running) as stub:
        root, alice = running.token("root", "admin"), running.token("alice")
        bob, carol = running.token("bob"), running.token("carol")
        now = datetime.now(UTC)
        ahead = pb.BookBackendRequest(token=root, backend="emulator", users=["alice"])
        ahead.starts_at.CopyFrom(convert.timestamp(now + timedelta(hours=1)))
        ahead.ends_at.CopyFrom(convert.timestamp(now + timedelta(hours=2)))
        booked = await stub.BookBackend(ahead)
        assert booked.error.code == "", booked.error
        maintenance = pb.BookBackendRequest(token=root, backend="emulator", maintenance=True,
                                            note="laser swap")
        maintenance.starts_at.CopyFrom(convert.timestamp(now + timedelta(days=1)))
        maintenance.ends_at.CopyFrom(convert.timestamp(now + timedelta(days=1, hours=1)))
        assert (await stub.BookBackend(maintenance)).error.code == ""
        opened = await stub.OpenSession(pb.OpenSessionRequest(token=bob, backend="emulator"))
        assert opened.error.code == "", opened.error
        first = await submit(running, bob)
        assert await take(running) == first
        session = await begun(stub, bob)
        carols = await submit(running, carol)
        alices = await submit(running, alice)
        bobs = await submit(running, bob)
        listed = await stub.ListBookings(pb.ListBookingsRequest(token=root))
    async with scheduler_in(mode, tmp_path, request, token_database) as running, \
            reservations_of(running) as stub:
        # Listed as they were.
        assert await stub.ListBookings(pb.ListBookingsRequest(token=root)) == listed
        [after] = (await stub.ListSessions(pb.ListSessionsRequest(token=bob))).sessions
        assert after == session
        # Enforced as they were: bob's session first, then carol's; alice's waits for her
        # window; the maintenance ahead is announced.
        assert await take(running) == bobs
        assert await take(running) == carols
        assert await take(running) == ""
        assert "waiting for your reservation of emulator" in await detail(
            running, alice, alices)
        status = await running.clients.submission.GetServiceStatus(
            submission_pb2.GetServiceStatusRequest(token=carol, backend="emulator"))
        assert "maintenance booked from" in status.description
        # Cancelled after the restart: alice's job goes.
        cancelled = await stub.CancelBooking(pb.CancelBookingRequest(
            token=root, booking_id=booked.booking.booking_id))
        assert cancelled.error.code == "", cancelled.error
        assert await take(running) == alices
        closed = await stub.CloseSession(pb.CloseSessionRequest(
            token=bob, session_id=session.session_id))
        assert closed.error.code == "" and not closed.session.open


async def test_a_budget_spent_before_a_restart_is_spent_after_it(
        mode: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase) -> None:
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[roles.developer]\nperiod = "month"\nshots = 200\n')
    env = {"SCHEDULER_BUDGETS_FILE": str(budgets)}
    async with scheduler_in(mode, tmp_path, request, token_database, env) as running:
        alice = running.token("alice")
        jobs = [await submit(running, alice) for _ in range(3)]  # 100 shots each
        assert [await take(running) for _ in range(2)] == jobs[:2]  # 200 of 200
    async with scheduler_in(mode, tmp_path, request, token_database, env) as running:
        # Counted again from the store: alice's third waits, a fourth is refused.
        assert await take(running) == ""  # not counted yet: the look begins the count
        for _ in range(200):
            if "your budget for this month is spent" in await detail(running, alice, jobs[2]):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the budget was never counted")
        assert await take(running) == ""  # counted: spent
        refused = await running.clients.submission.SubmitJob(submit_request(alice))
        assert refused.error.code == "RESOURCE_EXHAUSTED"
        assert "this job would start past the budget of 200 shots per month: 200 used" in \
            refused.error.description
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.submission_port}")
        try:
            usage = await jobs_pb2_grpc.JobsServiceStub(channel).GetUsage(
                jobs_pb2.GetUsageRequest(token=alice))
        finally:
            await channel.close()
        assert usage.error.code == "", usage.error
        [mine] = usage.usage
        assert (mine.budget.period, mine.budget.shots, mine.budget.shots_used) == (
            "month", 200, 200)
        assert not mine.budget.HasField("qpu_seconds")

"""Bookings, sessions and budgets among replicas, over real gRPC on one moto table: the
leader decides, a follower passes the changes on and answers the listings from the store,
and after a failover the new leader enforces what the last one was told
(docs/replicas.md; tests/integration/test_replica_routing.py's replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from pb.mqc3_cloud.scheduler.v1 import submission_pb2
from pb.mqc3_scheduler.extension.v1 import reservations_pb2 as pb
from pb.mqc3_scheduler.extension.v1 import reservations_pb2_grpc
from scheduler.messages import convert
from scheduler.wiring.app import Scheduler
from tests.helpers import AwsNames, TokenDatabase, aws_config, submit_request
from tests.integration.test_replica_routing import ROUNDS_ENV, Replica, replicas, submit, until

Stub = reservations_pb2_grpc.ReservationsServiceStub


@contextlib.asynccontextmanager
async def reservations_of(replica: Replica) -> AsyncIterator[Stub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{replica.scheduler.submission_port}")
    try:
        yield reservations_pb2_grpc.ReservationsServiceStub(channel)
    finally:
        await channel.close()


async def take(replica: Replica) -> str:
    answer = await replica.clients.assign()
    assert answer.error.code == "", answer.error
    return str(answer.job_id)


async def detail(replica: Replica, token: str, job_id: str) -> str:
    answer = await replica.clients.submission.GetJobStatus(
        submission_pb2.GetJobStatusRequest(token=token, job_id=job_id), timeout=20)
    assert answer.error.code == "", answer.error
    return str(answer.status_detail)


@contextlib.asynccontextmanager
async def replicas_with(names: AwsNames, tokens: TokenDatabase,
                        env: dict[str, str]) -> AsyncIterator[list[Replica]]:
    """Two replicas with ``env``, the first leading."""
    started: list[Replica] = []
    try:
        for _ in range(2):
            scheduler = Scheduler(aws_config(names, tokens.address, env=env))
            await scheduler.start()
            started.append(Replica(scheduler))
        yield started
    finally:
        for replica in started:
            await replica.close()


def window(token: str, users: list[str], hours: float) -> pb.BookBackendRequest:
    now = datetime.now(UTC)
    request = pb.BookBackendRequest(token=token, backend="emulator", users=users)
    request.starts_at.CopyFrom(convert.timestamp(now - timedelta(seconds=1)))
    request.ends_at.CopyFrom(convert.timestamp(now + timedelta(hours=hours)))
    return request


async def test_a_follower_passes_bookings_and_sessions_on_and_a_new_leader_enforces_them(
        aws_names: AwsNames, token_database: TokenDatabase) -> None:
    async with replicas(aws_names, token_database) as (leader, follower), \
            reservations_of(follower) as through_follower:
        root = token_database.token("root", "admin")
        alice, bob = token_database.token("alice", "developer"), token_database.token(
            "bob", "developer")
        carol = token_database.token("carol", "developer")
        booked = await through_follower.BookBackend(window(root, ["alice", "carol"], 1))
        assert booked.error.code == "", booked.error
        # Decided at the leader: its hand-overs keep the window.
        bobs = await submit(follower, bob)
        alices = await submit(follower, alice)
        assert await take(leader) == alices
        assert await take(follower) == ""
        assert "emulator is reserved for other users until" in await detail(
            follower, bob, bobs)
        # A session opened through the follower is the leader's too.
        opened = await through_follower.OpenSession(pb.OpenSessionRequest(
            token=carol, backend="emulator"))
        assert opened.error.code == "", opened.error
        first = await submit(follower, carol)
        assert await take(follower) == first
        listed = await through_follower.ListSessions(pb.ListSessionsRequest(token=carol))
        for _ in range(100):
            if listed.sessions[0].HasField("started_at"):
                break
            await asyncio.sleep(0.05)
            listed = await through_follower.ListSessions(pb.ListSessionsRequest(token=carol))
        [session] = listed.sessions
        assert session.open and session.HasField("started_at")
        bookings = await through_follower.ListBookings(pb.ListBookingsRequest(token=root))
        assert [b.booking_id for b in bookings.bookings] == [booked.booking.booking_id]
        later_alices = await submit(follower, alice)
        carols = await submit(follower, carol)
        assert await take(follower) == carols  # the session goes first

        await leader.scheduler.stop(grace_s=5)
        await until(lambda: follower.scheduler.replicas.ready, timeout_s=10)
        # The new leader read the bookings and the sessions at the start of its term.
        more = await submit(follower, carol)
        assert await take(follower) == more  # carol's session still goes first
        assert await take(follower) == later_alices
        assert await take(follower) == ""  # bob's still waits for the window's end
        assert "reserved for other users" in await detail(follower, bob, bobs)
        assert (await through_follower.ListSessions(pb.ListSessionsRequest(
            token=carol))).sessions == [session]
        cancelled = await through_follower.CancelBooking(pb.CancelBookingRequest(
            token=root, booking_id=booked.booking.booking_id))
        assert cancelled.error.code == "", cancelled.error
        assert await take(follower) == bobs


async def test_a_budget_holds_for_the_whole_service_through_a_follower_and_a_failover(
        aws_names: AwsNames, token_database: TokenDatabase, tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[roles.developer]\nperiod = "day"\nshots = 200\n')
    env = {**ROUNDS_ENV, "SCHEDULER_BUDGETS_FILE": str(budgets)}
    async with replicas_with(aws_names, token_database, env) as (leader, follower):
        alice = token_database.token("alice", "developer")
        jobs = [await submit(follower, alice) for _ in range(3)]
        assert [await take(follower) for _ in range(2)] == jobs[:2]
        refused = await follower.clients.submission.SubmitJob(submit_request(alice),
                                                              timeout=20)
        assert refused.error.code == "RESOURCE_EXHAUSTED", refused.error
        await leader.scheduler.stop(grace_s=5)
        await until(lambda: follower.scheduler.replicas.ready, timeout_s=10)
        assert await take(follower) == ""  # the new leader counts first, from the store
        for _ in range(100):
            if "budget for this day is spent" in await detail(follower, alice, jobs[2]):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the new leader never counted the budget")
        assert await take(follower) == ""
        again = await follower.clients.submission.SubmitJob(submit_request(alice),
                                                            timeout=20)
        assert "this job would start past the budget of 200 shots per day: 200 used" in \
            again.error.description


async def test_every_replica_shows_a_maintenance_window_ahead_and_while_it_is_open(
        aws_names: AwsNames, token_database: TokenDatabase) -> None:
    """A follower answers GetServiceStatus itself, from the bookings it reads from the store
    each round of its watch (at most MAX_SLEEP_S, job_manager/watchdog.py): it shows a
    booking within one round of the booking, and then switches at the window's edges on
    its own clock, as the leader does (docs/reservations.md)."""
    async with replicas(aws_names, token_database) as (leader, follower), \
            reservations_of(follower) as through_follower:
        root, alice = token_database.token("root", "admin"), token_database.token(
            "alice", "developer")
        asking = submission_pb2.GetServiceStatusRequest(token=alice, backend="emulator")

        async def status_of(replica: Replica) -> submission_pb2.GetServiceStatusResponse:
            return await replica.clients.submission.GetServiceStatus(asking, timeout=20)

        now = datetime.now(UTC)
        ahead = pb.BookBackendRequest(token=root, backend="emulator", maintenance=True)
        ahead.starts_at.CopyFrom(convert.timestamp(now + timedelta(hours=1)))
        ahead.ends_at.CopyFrom(convert.timestamp(now + timedelta(hours=2)))
        assert (await through_follower.BookBackend(ahead)).error.code == ""
        for replica in (leader, follower):

            async def announces(replica: Replica = replica) -> bool:
                return "maintenance booked from" in (await status_of(replica)).description

            await until_async(announces, 12.0, f"{replica is leader=}")
        open_now = window(root, [], 0.5)
        open_now.maintenance = True
        assert (await through_follower.BookBackend(open_now)).error.code == ""
        for replica in (leader, follower):

            async def in_maintenance(replica: Replica = replica) -> bool:
                status = await status_of(replica)
                return (status.status == submission_pb2.SERVICE_STATUS_MAINTENANCE
                        and status.description.startswith("in maintenance until "))

            await until_async(in_maintenance, 12.0, f"{replica is leader=}")


async def until_async(condition: object, timeout_s: float, what: str) -> None:
    """Wait until the async ``condition`` holds, failing after ``timeout_s``."""
    assert callable(condition)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.2)

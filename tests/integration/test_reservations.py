"""Sessions, bookings and budgets over real gRPC, in both modes (docs/reservations.md):
the first, simplest promise of each, end to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2, submission_pb2
from pb.mqc3_scheduler.extension.v1 import jobs_pb2, jobs_pb2_grpc, reservations_pb2_grpc
from pb.mqc3_scheduler.extension.v1 import reservations_pb2 as pb
from scheduler.messages import convert
from tests.conftest import Running, scheduler_in
from tests.helpers import UPLOAD_HEADERS, TokenDatabase, gzip_result, submit_request

QUEUED, RUNNING = job_pb2.JOB_STATUS_QUEUED, job_pb2.JOB_STATUS_RUNNING


@pytest.fixture
async def reservations(running: Running) -> AsyncIterator[
        reservations_pb2_grpc.ReservationsServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.submission_port}")
    yield reservations_pb2_grpc.ReservationsServiceStub(channel)
    await channel.close()


async def submit(running: Running, token: str, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    answer = await running.clients.submission.SubmitJob(submit_request(token),
                                                        metadata=metadata or None)
    assert answer.error.code == "", answer.error
    return str(answer.job_id)


async def take(running: Running) -> str:
    answer = await running.clients.execution.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend="emulator"))
    assert answer.error.code == "", answer.error
    return str(answer.job_id)


async def detail(running: Running, token: str, job_id: str) -> str:
    answer = await running.clients.submission.GetJobStatus(
        submission_pb2.GetJobStatusRequest(token=token, job_id=job_id))
    assert answer.error.code == "", answer.error
    return str(answer.status_detail)


async def test_a_window_admits_only_its_users_and_says_why_the_others_wait(
        running: Running, reservations: reservations_pb2_grpc.ReservationsServiceStub) -> None:
    root, alice, bob = running.token("root", "admin"), running.token("alice"), running.token("bob")
    now = datetime.now(UTC)
    request = pb.BookBackendRequest(token=root, backend="emulator", users=["alice"],
                                    note="alice's experiment")
    request.starts_at.CopyFrom(convert.timestamp(now - timedelta(seconds=1)))
    request.ends_at.CopyFrom(convert.timestamp(now + timedelta(hours=1)))
    booked = await reservations.BookBackend(request)
    assert booked.error.code == "", booked.error
    assert list(booked.booking.users) == ["alice"] and not booked.booking.maintenance
    bobs = await submit(running, bob)
    alices = await submit(running, alice)
    assert await take(running) == alices  # bob's came first, but the window is alice's
    assert await take(running) == ""
    waiting = await detail(running, bob, bobs)
    assert "emulator is reserved for other users until" in waiting and "alice" not in waiting
    # Listed for anyone, whose only for an admin.
    listed = await reservations.ListBookings(pb.ListBookingsRequest(token=bob))
    assert [(b.booking_id, list(b.users), b.for_you) for b in listed.bookings] == [
        (booked.booking.booking_id, [], False)]
    # Cancelled: the window ends at once, and bob's job goes.
    cancelled = await reservations.CancelBooking(pb.CancelBookingRequest(
        token=root, booking_id=booked.booking.booking_id))
    assert cancelled.error.code == "", cancelled.error
    assert await take(running) == bobs


async def test_only_an_admin_books_and_an_overlap_is_refused(
        running: Running, reservations: reservations_pb2_grpc.ReservationsServiceStub) -> None:
    root, alice = running.token("root", "admin"), running.token("alice")
    now = datetime.now(UTC)
    request = pb.BookBackendRequest(token=alice, backend="emulator", maintenance=True)
    request.starts_at.CopyFrom(convert.timestamp(now + timedelta(hours=1)))
    request.ends_at.CopyFrom(convert.timestamp(now + timedelta(hours=2)))
    refused = await reservations.BookBackend(request)
    assert refused.error.code == "INVALID_ARGUMENT"
    assert "for admins only" in refused.error.description
    request.token = root
    first = await reservations.BookBackend(request)
    assert first.error.code == "", first.error
    again = await reservations.BookBackend(request)
    assert again.error.code == "FAILED_PRECONDITION"
    assert first.booking.booking_id in again.error.description
    status = await running.clients.submission.GetServiceStatus(
        submission_pb2.GetServiceStatusRequest(token=alice, backend="emulator"))
    assert "maintenance booked from" in status.description


async def test_a_session_goes_before_the_queue_once_it_has_begun(
        running: Running, reservations: reservations_pb2_grpc.ReservationsServiceStub) -> None:
    alice, bob = running.token("alice"), running.token("bob")
    opened = await reservations.OpenSession(pb.OpenSessionRequest(token=alice, backend="emulator"))
    assert opened.error.code == "", opened.error
    session_id = opened.session.session_id
    first = await submit(running, alice, (("x-mqc3-session", session_id),))
    assert await take(running) == first  # the session begins
    bobs = [await submit(running, bob) for _ in range(3)]
    second = await submit(running, alice)  # no header: the open session takes it all the same
    assert await take(running) == second
    assert "a session of another user holds emulator" in await detail(running, bob, bobs[0])
    wrong = await running.clients.submission.SubmitJob(
        submit_request(alice), metadata=(("x-mqc3-session", "not-a-session"),))
    assert wrong.error.code == "INVALID_ARGUMENT"
    closed = await reservations.CloseSession(pb.CloseSessionRequest(token=alice,
                                                                    session_id=session_id))
    assert closed.error.code == "" and not closed.session.open
    assert await take(running) == bobs[0]


async def test_a_budget_refuses_the_job_that_would_start_past_it(
        mode: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase) -> None:
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[roles.developer]\nperiod = "day"\nshots = 150\n')
    async with scheduler_in(mode, tmp_path, request, token_database,
                            {"SCHEDULER_BUDGETS_FILE": str(budgets)}) as running:
        alice = running.token("alice")
        job_id = await submit(running, alice)  # 100 shots: within 150
        assert await take(running) == job_id  # handed over: 100 used
        refused = await running.clients.submission.SubmitJob(submit_request(alice))
        assert refused.error.code == "RESOURCE_EXHAUSTED"
        assert ("this job would start past the budget of 150 shots per day: 100 used this day"
                in refused.error.description)
        root = running.token("root", "admin")
        assert (await running.clients.submission.SubmitJob(submit_request(root))).job_id


# --- a client that knows nothing of any of it -------------------------------------------------
async def what_a_plain_client_sees(running: Running, token: str) -> list[Any]:
    """The SDK's calls for one job, submitted, run and fetched, with no new metadata: every
    answer as the client sees it, ids and times left out."""
    submission = running.clients.submission
    seen: list[Any] = []
    service = await submission.GetServiceStatus(
        submission_pb2.GetServiceStatusRequest(token=token, backend="emulator"))
    seen.append((service.error, service.status, service.description))
    submitted = await submission.SubmitJob(submit_request(token))
    seen.append((submitted.error, bool(submitted.job_id)))
    job_id = submitted.job_id
    status = await submission.GetJobStatus(
        submission_pb2.GetJobStatusRequest(token=token, job_id=job_id))
    seen.append((status.error, status.status, status.status_detail))
    assigned = await running.clients.assign()
    seen.append((assigned.error, assigned.job_id == job_id))
    put = await asyncio.to_thread(requests.put, assigned.upload_target.upload_url,
                                  data=gzip_result(b"\x0a\x02ok"), headers=UPLOAD_HEADERS,
                                  timeout=10)
    seen.append(put.status_code < 300)
    reported = await running.clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(
            job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS))
    seen.append(reported.error)
    result = await submission.GetJobResult(
        submission_pb2.GetJobResultRequest(token=token, job_id=job_id))
    seen.append((result.error, result.status, result.status_detail,
                 bool(result.result.result_url)))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.submission_port}")
    try:
        usage = await jobs_pb2_grpc.JobsServiceStub(channel).GetUsage(
            jobs_pb2.GetUsageRequest(token=token))
    finally:
        await channel.close()
    seen.append((usage.error, [u.HasField("budget") for u in usage.usage]))
    return seen


async def test_a_client_that_sends_nothing_new_sees_no_difference_beside_others_bookings(
        running: Running, reservations: reservations_pb2_grpc.ReservationsServiceStub) -> None:
    alice, root = running.token("alice"), running.token("root", "admin")
    before = await what_a_plain_client_sees(running, alice)
    assert before[2][1:] == (QUEUED, "queued: 1st of 1 on emulator")
    assert before[-1][1] == [False]  # no budget: none shown
    # Someone else's window on another backend, and an admin's session there.
    now = datetime.now(UTC)
    request = pb.BookBackendRequest(token=root, backend="qpu", users=["carol"])
    request.starts_at.CopyFrom(convert.timestamp(now - timedelta(seconds=1)))
    request.ends_at.CopyFrom(convert.timestamp(now + timedelta(hours=1)))
    assert (await reservations.BookBackend(request)).error.code == ""
    ahead = pb.BookBackendRequest(token=root, backend="qpu", maintenance=True)
    ahead.starts_at.CopyFrom(convert.timestamp(now + timedelta(days=1)))
    ahead.ends_at.CopyFrom(convert.timestamp(now + timedelta(days=2)))
    assert (await reservations.BookBackend(ahead)).error.code == ""
    opened = await reservations.OpenSession(pb.OpenSessionRequest(token=root, backend="qpu"))
    assert opened.error.code == "", opened.error
    assert await what_a_plain_client_sees(running, alice) == before

"""Every field of the reservations calls at its extremes, over real gRPC in both modes: the
times a Timestamp may name, windows of no length or less, users by the thousand and names
by the character, session limits from nothing to the largest Duration, ids of every
length, and the x-mqc3-session header naming what is not the caller's
(scheduler/services/reservations_service.py; docs/design.md, "Who may do what").

A refusal must come in band, INVALID_ARGUMENT (or NOT_FOUND for an id), naming the field;
a value accepted must travel: listed, enforced, and harmless to every later call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from pb.mqc3_cloud.scheduler.v1 import submission_pb2
from pb.mqc3_scheduler.extension.v1 import reservations_pb2 as pb
from pb.mqc3_scheduler.extension.v1 import reservations_pb2_grpc
from scheduler.messages import convert
from tests.conftest import SHARED, Running, scheduler_in
from tests.helpers import TokenDatabase, submit_request
from tests.integration.test_reservations import reservations, submit, take

__all__ = ["reservations"]

Stub = reservations_pb2_grpc.ReservationsServiceStub


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stub(shared: Running) -> AsyncIterator[Stub]:
    """The reservations service of the module's shared scheduler (its refusals change
    nothing: tests/conftest.py, SHARED)."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{shared.scheduler.submission_port}")
    yield Stub(channel)
    await channel.close()
LAST_SECOND = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a date holds
FIRST_SECOND = -62_135_596_800  # 0001-01-01T00:00:00Z
LARGEST_DURATION_S = 315_576_000_000  # the largest Duration protobuf defines (10,000 years)
INT64_MAX = 2**63 - 1


def stamp(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def at(moment: datetime) -> Timestamp:
    return convert.timestamp(moment)


def booking(token: str, starts: Timestamp | None, ends: Timestamp | None,
            users: tuple[str, ...] = ("alice",), backend: str = "emulator",
            note: str = "") -> pb.BookBackendRequest:
    request = pb.BookBackendRequest(token=token, backend=backend, users=list(users),
                                    maintenance=not users, note=note)
    if starts is not None:
        request.starts_at.CopyFrom(starts)
    if ends is not None:
        request.ends_at.CopyFrom(ends)
    return request


def soon(hours: float) -> Timestamp:
    return at(datetime.now(UTC) + timedelta(hours=hours))


def refused(answer: object, code: str, *words: str) -> str:
    error = answer.error  # type: ignore[attr-defined]
    assert error.code == code, error
    for word in words:
        assert word in error.description, error.description
    return str(error.description)


def accepted(answer: object) -> None:
    error = answer.error  # type: ignore[attr-defined]
    assert error.code == "", error


# --- BookBackend's times ---------------------------------------------------------------------
async def test_a_window_past_the_year_9999_is_held_as_for_ever_and_later_calls_still_work(
        running: Running, reservations: Stub) -> None:
    root, bob = running.token("root", "admin"), running.token("bob")
    for ends in (stamp(INT64_MAX), stamp(LAST_SECOND + 1), stamp(LAST_SECOND, 999_999_999)):
        forever = await reservations.BookBackend(booking(root, soon(-0.001), ends))
        accepted(forever)
        assert forever.booking.ends_at == stamp(LAST_SECOND, 999_999_000)
        bobs = await submit(running, bob)
        assert await take(running) == ""  # for ever alice's
        # Later writes of the bookings, its cancel among them, do not trip over it.
        accepted(await reservations.BookBackend(booking(root, soon(1), soon(2), (),
                                                        backend="qpu")))
        listed = await reservations.ListBookings(pb.ListBookingsRequest(token=root))
        assert [b.ends_at for b in listed.bookings
                if b.booking_id == forever.booking.booking_id] == [
            stamp(LAST_SECOND, 999_999_000)]
        accepted(await reservations.CancelBooking(pb.CancelBookingRequest(
            token=root, booking_id=forever.booking.booking_id)))
        assert await take(running) == bobs
        for other in listed.bookings:
            if other.booking_id != forever.booking.booking_id:
                accepted(await reservations.CancelBooking(pb.CancelBookingRequest(
                    token=root, booking_id=other.booking_id)))


async def test_a_window_from_before_the_year_1_is_open_now(
        running: Running, reservations: Stub) -> None:
    root, bob = running.token("root", "admin"), running.token("bob")
    for starts in (stamp(-INT64_MAX - 1), stamp(FIRST_SECOND - 1), stamp(FIRST_SECOND)):
        answer = await reservations.BookBackend(booking(root, starts, soon(1)))
        accepted(answer)
        assert answer.booking.starts_at == stamp(FIRST_SECOND)
        bobs = await submit(running, bob)
        assert await take(running) == ""
        accepted(await reservations.CancelBooking(pb.CancelBookingRequest(
            token=root, booking_id=answer.booking.booking_id)))
        assert await take(running) == bobs


@SHARED
@pytest.mark.parametrize(("field", "nanos"), [
    ("starts_at", -1), ("starts_at", 1_000_000_000), ("ends_at", -1),
    ("ends_at", -999_999_999), ("ends_at", 2**31 - 1), ("starts_at", -(2**31)),
])
async def test_a_timestamp_with_nanos_out_of_range_is_refused_naming_it(
        shared: Running, stub: Stub, field: str, nanos: int) -> None:
    root = shared.token("root", "admin")
    now = int(datetime.now(UTC).timestamp())
    request = booking(root, stamp(now), stamp(now + 3600))
    getattr(request, field).nanos = nanos
    before = (await stub.ListBookings(pb.ListBookingsRequest(token=root))).bookings
    refused(await stub.BookBackend(request), "INVALID_ARGUMENT",
            f"{field} is not a valid timestamp")
    assert (await stub.ListBookings(pb.ListBookingsRequest(token=root))).bookings == before


async def test_an_unset_start_is_now_and_an_unset_end_is_refused(
        running: Running, reservations: Stub) -> None:
    root, bob = running.token("root", "admin"), running.token("bob")
    refused(await reservations.BookBackend(booking(root, soon(-1), None)), "INVALID_ARGUMENT",
            "must end after it starts", "to unset")
    refused(await reservations.BookBackend(booking(root, None, None)), "INVALID_ARGUMENT",
            "to unset")
    before = datetime.now(UTC)
    answer = await reservations.BookBackend(booking(root, None, soon(1)))
    accepted(answer)
    starts = answer.booking.starts_at.ToDatetime(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= starts <= datetime.now(UTC)
    await submit(running, bob)
    assert await take(running) == ""  # open from the moment it was booked


async def test_windows_of_no_length_or_less_or_past_are_refused(
        running: Running, reservations: Stub) -> None:
    root = running.token("root", "admin")
    now = int(datetime.now(UTC).timestamp()) + 3600
    for starts, ends in [
        (stamp(now), stamp(now)),  # no length
        (stamp(now, 1), stamp(now, 999)),  # less than a microsecond: no length held
        (stamp(now + 1), stamp(now)),  # negative
        (stamp(LAST_SECOND + 5), stamp(INT64_MAX)),  # both past 9999: the same last date
        (stamp(now), stamp(FIRST_SECOND - 1)),
    ]:
        refused(await reservations.BookBackend(booking(root, starts, ends)),
                "INVALID_ARGUMENT", "must end after it starts")
    refused(await reservations.BookBackend(booking(root, soon(-2), soon(-1))),
            "INVALID_ARGUMENT", "must end in the future")
    refused(await reservations.BookBackend(booking(root, stamp(-INT64_MAX - 1),
                                                   stamp(FIRST_SECOND + 1))),
            "INVALID_ARGUMENT", "must end in the future")
    # The smallest window a date holds: a microsecond.
    accepted(await reservations.BookBackend(booking(root, stamp(now), stamp(now, 1000))))
    assert len((await reservations.ListBookings(pb.ListBookingsRequest(token=root)))
               .bookings) == 1


# --- BookBackend's users, note and backend ----------------------------------------------------
@SHARED
async def test_users_are_named_or_the_booking_is_maintenance_never_both_nor_neither(
        shared: Running, stub: Stub) -> None:
    root = shared.token("root", "admin")
    neither = booking(root, soon(1), soon(2), ())
    neither.maintenance = False
    refused(await stub.BookBackend(neither), "INVALID_ARGUMENT",
            "name at least one user, or book it for maintenance")
    both = booking(root, soon(1), soon(2), ("alice",))
    both.maintenance = True
    refused(await stub.BookBackend(both), "INVALID_ARGUMENT",
            "name its users, or book it for maintenance (no users), not both")


async def test_a_thousand_users_of_256_characters_each_are_the_most_a_booking_names(
        running: Running, reservations: Stub) -> None:
    root = running.token("root", "admin")
    names = tuple(f"{i:04d}" + "u" * 252 for i in range(1000))
    too_many = (*names, "one-more")
    refused(await reservations.BookBackend(booking(root, soon(1), soon(2), too_many)),
            "INVALID_ARGUMENT", "at most 1000 of them", "it names 1001")
    answer = await reservations.BookBackend(booking(root, soon(1), soon(2), names))
    accepted(answer)
    assert tuple(answer.booking.users) == names
    listed = await reservations.ListBookings(pb.ListBookingsRequest(token=root))
    assert tuple(listed.bookings[0].users) == names
    # Another booking beside it, and its cancel, still fit the store.
    other = await reservations.BookBackend(booking(root, soon(3), soon(4), names[:10]))
    accepted(other)
    accepted(await reservations.CancelBooking(pb.CancelBookingRequest(
        token=root, booking_id=other.booking.booking_id)))


@SHARED
@pytest.mark.parametrize("name", [
    "", " ", "a" * 257, " alice", "alice ", "\talice", "alice\n", "é" * 257,
])
async def test_a_name_that_is_not_a_name_is_refused(
        shared: Running, stub: Stub, name: str) -> None:
    root = shared.token("root", "admin")
    refused(await stub.BookBackend(booking(root, soon(1), soon(2), ("alice", name))),
            "INVALID_ARGUMENT", "each 1 to 256 characters", "is not a name")


async def test_names_of_256_characters_and_repeated_names_are_taken(
        running: Running, reservations: Stub) -> None:
    root = running.token("root", "admin")
    long_name, wide_name = "a" * 256, "語" * 256
    answer = await reservations.BookBackend(booking(
        root, soon(1), soon(2), (wide_name, long_name, "bob", long_name)))
    accepted(answer)
    assert list(answer.booking.users) == sorted({long_name, wide_name, "bob"})


async def test_a_note_of_1024_characters_is_the_longest(
        running: Running, reservations: Stub) -> None:
    root = running.token("root", "admin")
    refused(await reservations.BookBackend(booking(root, soon(1), soon(2), note="n" * 1025)),
            "INVALID_ARGUMENT", "note may be at most 1024 characters, got 1025")
    answer = await reservations.BookBackend(booking(root, soon(1), soon(2), note="ñ" * 1024))
    accepted(answer)
    assert answer.booking.note == "ñ" * 1024


@SHARED
async def test_a_backend_that_is_not_known_is_refused(
        shared: Running, stub: Stub) -> None:
    root = shared.token("root", "admin")
    refused(await stub.BookBackend(booking(root, soon(1), soon(2), backend="")),
            "INVALID_ARGUMENT")
    refused(await stub.BookBackend(booking(root, soon(1), soon(2),
                                                   backend="nowhere")),
            "INVALID_ARGUMENT", "nowhere")
    refused(await stub.OpenSession(pb.OpenSessionRequest(
        token=shared.token("alice"), backend="nowhere")), "INVALID_ARGUMENT", "nowhere")


# --- OpenSession's limits ------------------------------------------------------------------------
def duration(seconds: int, nanos: int = 0) -> Duration:
    return Duration(seconds=seconds, nanos=nanos)


@SHARED
@pytest.mark.parametrize(("seconds", "nanos", "value"), [
    (0, 0, "0"), (-1, 0, "-1"), (0, -1, "-1e-09"), (-1, -999_999_999, "-1.999999999"),
    (28_800, 1, "28800.000000001"),  # a nanosecond past the developer's 8 hours
    (LARGEST_DURATION_S, 999_999_999, "315576000001"),
    (-LARGEST_DURATION_S, -999_999_999, "-315576000001"),
])
async def test_a_session_length_out_of_range_is_refused_naming_it(
        shared: Running, stub: Stub, seconds: int, nanos: int, value: str) -> None:
    alice = shared.token("alice")
    for field, name, maximum in (("max_length", "max_length_s", "28800"),
                                 ("idle_timeout", "idle_timeout_s", "600")):
        request = pb.OpenSessionRequest(token=alice, backend="emulator")
        getattr(request, field).CopyFrom(duration(seconds, nanos))
        description = refused(await stub.OpenSession(request), "INVALID_ARGUMENT",
                              f"{name} must be from more than 0 to {maximum} s")
        if not (field == "idle_timeout" and seconds == 28_800):
            assert f"it is {value} s" in description


@SHARED
@pytest.mark.parametrize(("seconds", "nanos"), [
    (1, -1), (-1, 1), (0, 1_000_000_000), (0, -1_000_000_000), (INT64_MAX, 0),
    (-INT64_MAX - 1, 0), (LARGEST_DURATION_S + 1, 0),
])
async def test_a_malformed_duration_is_refused_naming_it(
        shared: Running, stub: Stub, seconds: int, nanos: int) -> None:
    alice = shared.token("alice")
    before = (await stub.ListSessions(pb.ListSessionsRequest(token=alice))).sessions
    for field in ("max_length", "idle_timeout"):
        request = pb.OpenSessionRequest(token=alice, backend="emulator")
        getattr(request, field).CopyFrom(duration(seconds, nanos))
        refused(await stub.OpenSession(request), "INVALID_ARGUMENT",
                f"{field} is not a Duration")
    assert (await stub.ListSessions(pb.ListSessionsRequest(token=alice))).sessions == before


async def test_a_session_of_a_nanosecond_is_taken_and_unset_limits_are_the_roles_defaults(
        running: Running, reservations: Stub) -> None:
    alice, bob = running.token("alice"), running.token("bob")
    short = pb.OpenSessionRequest(token=alice, backend="emulator", max_length=duration(0, 1),
                                  idle_timeout=duration(0, 1))
    answer = await reservations.OpenSession(short)
    accepted(answer)
    assert answer.session.open
    plain = await reservations.OpenSession(pb.OpenSessionRequest(token=bob, backend="emulator"))
    accepted(plain)
    assert (plain.session.max_length, plain.session.idle_timeout) == (
        duration(3600), duration(60))
    assert plain.session.ends_by.ToDatetime() - plain.session.opened_at.ToDatetime() == \
        timedelta(hours=1)
    longest = await reservations.OpenSession(pb.OpenSessionRequest(
        token=running.token("carol"), backend="emulator", max_length=duration(28_800),
        idle_timeout=duration(600)))
    accepted(longest)
    assert longest.session.max_length == duration(28_800)


async def test_the_largest_duration_is_taken_where_an_operator_allows_it(
        mode: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase) -> None:
    env = {"SCHEDULER_SESSION_MAX_LENGTH_S_DEVELOPER": "1e12",
           "SCHEDULER_SESSION_MAX_IDLE_S_DEVELOPER": "inf"}
    async with scheduler_in(mode, tmp_path, request, token_database, env) as running:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.submission_port}")
        stub = reservations_pb2_grpc.ReservationsServiceStub(channel)
        try:
            alice, bob = running.token("alice"), running.token("bob")
            largest = duration(LARGEST_DURATION_S)
            answer = await stub.OpenSession(pb.OpenSessionRequest(
                token=alice, backend="emulator", max_length=largest, idle_timeout=largest))
            accepted(answer)
            assert answer.session.max_length == largest
            assert answer.session.idle_timeout == largest
            assert answer.session.ends_by == stamp(LAST_SECOND, 999_999_000)
            first = await submit(running, alice)
            assert await take(running) == first  # the session begins
            bobs = await submit(running, bob)
            assert (await stub.ListSessions(pb.ListSessionsRequest(token=alice))).sessions[
                0].open
            status = await running.clients.submission.GetJobStatus(
                submission_pb2.GetJobStatusRequest(token=bob, job_id=bobs))
            assert "a session of another user holds emulator, at most until " \
                   "9999-12-31 23:59:59 UTC" in status.status_detail
            # Past the largest Duration the wire is malformed, whatever the operator allows.
            for seconds in (LARGEST_DURATION_S + 1, INT64_MAX):
                refused(await stub.OpenSession(pb.OpenSessionRequest(
                    token=bob, backend="emulator", idle_timeout=duration(seconds))),
                    "INVALID_ARGUMENT", "idle_timeout is not a Duration")
            accepted(await stub.CloseSession(pb.CloseSessionRequest(
                token=alice, session_id=answer.session.session_id)))
        finally:
            await channel.close()


# --- ids and the header ------------------------------------------------------------------------
@SHARED
async def test_ids_that_name_nothing_are_not_found_whatever_their_length(
        shared: Running, stub: Stub) -> None:
    root, alice = shared.token("root", "admin"), shared.token("alice")
    for given, named in [("", ""), ("x" * 65, "x" * 64), ("x" * 64, "x" * 64),
                         ("00000000-0000-0000-0000-000000000000",
                          "00000000-0000-0000-0000-000000000000"), ("é" * 100, "é" * 64)]:
        closed = await stub.CloseSession(pb.CloseSessionRequest(token=alice,
                                                                        session_id=given))
        assert refused(closed, "NOT_FOUND") == f"there is no open session {named} of yours"
        cancelled = await stub.CancelBooking(pb.CancelBookingRequest(
            token=root, booking_id=given))
        assert refused(cancelled, "NOT_FOUND") == f"there is no booking {named}"


async def test_another_users_session_is_not_yours_to_close_or_to_name(
        running: Running, reservations: Stub) -> None:
    alice, bob = running.token("alice"), running.token("bob")
    opened = await reservations.OpenSession(pb.OpenSessionRequest(token=alice,
                                                                  backend="emulator"))
    accepted(opened)
    session_id = opened.session.session_id
    # To bob, alice's session answers as one that does not exist.
    closed = await reservations.CloseSession(pb.CloseSessionRequest(token=bob,
                                                                    session_id=session_id))
    assert refused(closed, "NOT_FOUND") == f"there is no open session {session_id} of yours"
    unknown = "11111111-2222-3333-4444-555555555555"
    answers = []
    for named in (session_id, unknown):
        answer = await running.clients.submission.SubmitJob(
            submit_request(bob), metadata=(("x-mqc3-session", named),))
        answers.append(refused(answer, "INVALID_ARGUMENT").replace(named, "<id>"))
    assert answers[0] == answers[1]
    # Alice's own session named for another backend is not a session there.
    elsewhere = await running.clients.submission.SubmitJob(
        submit_request(alice, "qpu"), metadata=(("x-mqc3-session", session_id),))
    assert elsewhere.error.code == "INVALID_ARGUMENT" or elsewhere.error.code == "UNAVAILABLE"
    long_header = await running.clients.submission.SubmitJob(
        submit_request(alice), metadata=(("x-mqc3-session", "s" * 1000),))
    assert refused(long_header, "INVALID_ARGUMENT").count("s" * 64) == 1
    assert "s" * 65 not in long_header.error.description
    # Nothing of bob's was queued by the refusals; alice's session is still hers alone.
    listed = await reservations.ListSessions(pb.ListSessionsRequest(token=bob))
    assert not listed.sessions
    assert await take(running) == ""


async def test_only_an_admin_lists_everyones_sessions(
        running: Running, reservations: Stub) -> None:
    alice, root = running.token("alice"), running.token("root", "admin")
    accepted(await reservations.OpenSession(pb.OpenSessionRequest(token=alice,
                                                                  backend="emulator")))
    refused(await reservations.ListSessions(pb.ListSessionsRequest(token=alice,
                                                                   all_users=True)),
            "INVALID_ARGUMENT", "for admins only")
    everyone = await reservations.ListSessions(pb.ListSessionsRequest(token=root,
                                                                      all_users=True))
    assert [s.owner_name for s in everyone.sessions] == ["alice"]
    assert not (await reservations.ListSessions(pb.ListSessionsRequest(token=root))).sessions


@pytest.mark.parametrize("mode", ["aws", "standalone"])
async def test_bookings_past_what_one_store_item_holds_are_refused_and_a_cancel_makes_room(
        mode: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase) -> None:
    # The bookings are one document (job_manager/documents.py): 350,000 bytes at most, in
    # both stores alike, since a DynamoDB item holds 400 KB. A booking that would take it
    # past that is refused in band, naming the size, and changes nothing.
    async with scheduler_in(mode, tmp_path, request, token_database) as running:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.submission_port}")
        stub = reservations_pb2_grpc.ReservationsServiceStub(channel)
        try:
            root = running.token("root", "admin")
            names = tuple(f"{i:04d}" + "u" * 252 for i in range(1000))  # about 260 KB
            first = await stub.BookBackend(booking(root, soon(1), soon(1.5), names))
            accepted(first)
            second = await stub.BookBackend(booking(root, soon(2), soon(2.5), names))
            assert second.error.code == "RESOURCE_EXHAUSTED", second.error
            assert "the bookings would take" in second.error.description
            assert "more than the 350000 they may take" in second.error.description
            wide = tuple(f"{i:04d}" + "語" * 252 for i in range(1000))  # 3 bytes a character
            alone = await stub.BookBackend(booking(root, soon(5), soon(6), wide, "qpu"))
            assert alone.error.code == "RESOURCE_EXHAUSTED", alone.error
            listed = await stub.ListBookings(pb.ListBookingsRequest(token=root))
            assert [b.booking_id for b in listed.bookings] == [first.booking.booking_id]
            cancelled = await stub.CancelBooking(pb.CancelBookingRequest(
                token=root, booking_id=first.booking.booking_id))
            assert cancelled.error.code == "", cancelled.error
            accepted(await stub.BookBackend(booking(root, soon(2), soon(2.5), names)))
        finally:
            await channel.close()

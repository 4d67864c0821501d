"""Bookings on a fake clock over a real SQLite store: windows, overlaps, who may run, and
what survives a restart (job_manager/bookings.py; docs/reservations.md)."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

import pytest

from common.clock import FakeClock
from job_manager.bookings import Calendar
from job_manager.stores.sqlite_job_store import SqliteJobStore
from message_manager import SchedulerError
from tests.helpers import refused_as
from tests.unit.stores import store

__all__ = ["store"]  # the fixture, shared (tests/unit/stores.py)

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


async def refused_with(call: Awaitable[object], key: str) -> SchedulerError:
    with pytest.raises(SchedulerError) as info:
        await call
    assert info.value.key == key, str(info.value)
    return info.value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


async def test_a_window_admits_its_users_only_while_it_is_open(
        store: SqliteJobStore, clock: FakeClock) -> None:
    calendar = Calendar(store, clock)
    booking = await calendar.book("qpu", T0 + HOUR, T0 + 2 * HOUR, ("alice", "bob"), "root")
    assert booking.users == ("alice", "bob")
    # Before it opens: its users' jobs on qpu wait for it; everyone else runs.
    waiting = calendar.hold("qpu", "alice", T0)
    assert waiting is not None and waiting.until == T0 + HOUR
    assert "waiting for your reservation of qpu" in waiting.why
    assert calendar.hold("qpu", "carol", T0) is None
    assert calendar.hold("emulator", "alice", T0) is None  # other backends are not booked
    # Open: its users run, the rest wait until its end.
    inside = T0 + HOUR
    assert calendar.hold("qpu", "alice", inside) is None
    held = calendar.hold("qpu", "carol", inside)
    assert held is not None and held.until == T0 + 2 * HOUR
    assert held.why == "qpu is reserved for other users until 2026-12-07 11:00:00 UTC"
    assert "alice" not in held.why and "bob" not in held.why
    # The end is not inside: everyone runs again.
    assert calendar.hold("qpu", "carol", T0 + 2 * HOUR) is None


async def test_maintenance_admits_no_one_and_is_known_before_it_opens(
        store: SqliteJobStore, clock: FakeClock) -> None:
    calendar = Calendar(store, clock)
    booking = await calendar.book("qpu", T0 + HOUR, T0 + 2 * HOUR, (), "root", "laser swap")
    assert booking.maintenance and calendar.next_maintenance("qpu", T0) == booking
    assert calendar.hold("qpu", "alice", T0) is None  # not open yet
    held = calendar.hold("qpu", "alice", T0 + HOUR)
    assert held is not None and "qpu is in maintenance until" in held.why
    assert calendar.next_maintenance("qpu", T0 + 2 * HOUR) is None


@pytest.mark.parametrize(("start_h", "end_h"), [(1, 2), (0.5, 1.5), (1.5, 1.75), (0, 3)])
async def test_an_overlapping_booking_is_refused_and_changes_nothing(
        store: SqliteJobStore, clock: FakeClock, start_h: float, end_h: float) -> None:
    calendar = Calendar(store, clock)
    first = await calendar.book("qpu", T0 + HOUR, T0 + 2 * HOUR, ("alice",), "root")
    await refused_as(calendar.book("qpu", T0 + start_h * HOUR, T0 + end_h * HOUR, ("bob",),
                                   "root"), "booking_overlaps", backend="qpu",
                     booking_id=first.booking_id, starts_at="2026-12-07 10:00:00 UTC",
                     ends_at="2026-12-07 11:00:00 UTC", users="alice")
    assert calendar.bookings == (first,)


async def test_windows_that_touch_do_not_overlap_and_other_backends_are_apart(
        store: SqliteJobStore, clock: FakeClock) -> None:
    calendar = Calendar(store, clock)
    await calendar.book("qpu", T0 + HOUR, T0 + 2 * HOUR, ("alice",), "root")
    await calendar.book("qpu", T0 + 2 * HOUR, T0 + 3 * HOUR, ("bob",), "root")
    await calendar.book("emulator", T0 + HOUR, T0 + 2 * HOUR, (), "root")
    assert len(calendar.bookings) == 3


@pytest.mark.parametrize(("start", "end", "key"), [
    (T0 + HOUR, T0 + HOUR, "booking_window_empty"),  # zero length
    (T0 + HOUR, T0 + HOUR - timedelta(microseconds=1), "booking_window_empty"),
    (T0 - 2 * HOUR, T0 - HOUR, "booking_in_the_past"),
    (T0 - 2 * HOUR, T0, "booking_in_the_past"),  # ends now: nothing left of it
])
async def test_a_window_that_is_empty_or_past_is_refused(
        store: SqliteJobStore, clock: FakeClock, start: datetime, end: datetime,
        key: str) -> None:
    calendar = Calendar(store, clock)
    await refused_with(calendar.book("qpu", start, end, ("alice",), "root"), key)
    assert calendar.bookings == () and await store.read_document("bookings") is None


async def test_a_window_open_now_may_be_booked_to_its_end(
        store: SqliteJobStore, clock: FakeClock) -> None:
    calendar = Calendar(store, clock)
    booking = await calendar.book("qpu", T0 - HOUR, T0 + timedelta(microseconds=1), ("a",), "r")
    assert calendar.open_window("qpu", T0) == booking


async def test_bookings_survive_a_restart_and_a_cancel_frees_the_window(
        store: SqliteJobStore, clock: FakeClock) -> None:
    calendar = Calendar(store, clock)
    booking = await calendar.book("qpu", T0 + HOUR, T0 + 2 * HOUR, ("alice",), "root", "✓")
    restarted = Calendar(store, clock)
    await restarted.load()
    assert restarted.bookings == (booking,)
    assert await restarted.cancel(booking.booking_id) == booking
    await refused_as(restarted.cancel(booking.booking_id), "booking_not_found",
                     booking_id=booking.booking_id)
    await calendar.load()
    assert calendar.bookings == ()
    await calendar.book("qpu", T0 + HOUR, T0 + 2 * HOUR, ("bob",), "root")  # free again


async def test_a_booking_raced_by_another_writer_is_checked_against_theirs(
        store: SqliteJobStore, clock: FakeClock) -> None:
    ours, theirs = Calendar(store, clock), Calendar(store, clock)
    await theirs.book("qpu", T0 + HOUR, T0 + 2 * HOUR, ("bob",), "root")
    # Ours has not read theirs: its write is refused by the version, it reads again and
    # finds the overlap.
    await refused_with(ours.book("qpu", T0 + HOUR, T0 + 2 * HOUR, ("alice",), "root"),
                       "booking_overlaps")
    await ours.book("qpu", T0 + 3 * HOUR, T0 + 4 * HOUR, ("alice",), "root")
    await theirs.load()
    assert [b.users for b in theirs.bookings] == [("bob",), ("alice",)]


async def test_windows_ended_long_ago_are_dropped_at_the_next_write(
        store: SqliteJobStore, clock: FakeClock) -> None:
    calendar = Calendar(store, clock)
    await calendar.book("qpu", T0, T0 + HOUR, ("alice",), "root")
    clock.advance(timedelta(days=8).total_seconds())
    await calendar.book("qpu", clock.now(), clock.now() + HOUR, ("bob",), "root")
    assert [b.users for b in calendar.bookings] == [("bob",)]

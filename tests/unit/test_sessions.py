"""Sessions on a fake clock over a real SQLite store: limits, one per token and backend,
the holder of a backend, and the ways a session ends (job_manager/sessions.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.clock import FakeClock
from common.identity import Principal, Role, fingerprint
from job_manager.sessions import SessionBook, SessionLimits
from job_manager.stores.sqlite_job_store import SqliteJobStore
from tests.helpers import refused_as
from tests.unit.stores import store

__all__ = ["store"]  # the fixture, shared (tests/unit/stores.py)

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
ALICE = Principal("alice", Role.DEVELOPER, fingerprint("token-alice"))
BOB = Principal("bob", Role.DEVELOPER, fingerprint("token-bob"))
ROOT = Principal("root", Role.ADMIN, fingerprint("token-root"))
LIMITS = {Role.DEVELOPER: SessionLimits(max_length_s=3600, max_idle_timeout_s=300,
                                        default_length_s=600, default_idle_timeout_s=60)}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def book(store: SqliteJobStore, clock: FakeClock) -> SessionBook:
    return SessionBook(store, clock, LIMITS)


async def test_a_session_gets_the_roles_defaults_and_holds_its_backend_once_begun(
        book: SessionBook) -> None:
    session = await book.open(ALICE, "qpu", None, None)
    assert (session.max_length_s, session.idle_timeout_s) == (600, 60)
    assert book.open_of(ALICE.fingerprint, "qpu") == session
    assert book.holder("qpu", T0) is None  # open, but no job of it handed over yet
    await book.handed_over(ALICE.fingerprint, "qpu")
    holder = book.holder("qpu", T0)
    assert holder is not None and holder.session_id == session.session_id
    assert holder.started_at == T0
    assert book.holder("emulator", T0) is None


@pytest.mark.parametrize(("length", "idle", "field"), [
    (3600.001, 10, "max_length_s"), (-1, 10, "max_length_s"), (0, 10, "max_length_s"),
    (100, 300.5, "idle_timeout_s"), (100, -5, "idle_timeout_s"), (100, 0, "idle_timeout_s"),
])
async def test_limits_past_the_roles_are_refused(book: SessionBook, length: float, idle: float,
                                                 field: str) -> None:
    maximum = "3600" if field == "max_length_s" else "300"
    value = length if field == "max_length_s" else idle
    await refused_as(book.open(ALICE, "qpu", length, idle), "session_limit_out_of_range",
                     field=field, minimum="more than 0", maximum=maximum, role="developer",
                     value=f"{value:.15g}")
    assert book.sessions == ()


async def test_the_limits_themselves_are_allowed(book: SessionBook) -> None:
    session = await book.open(ALICE, "qpu", 3600, 300)
    assert (session.max_length_s, session.idle_timeout_s) == (3600, 300)


async def test_one_open_session_per_token_and_backend(book: SessionBook) -> None:
    first = await book.open(ALICE, "qpu", None, None)
    await refused_as(book.open(ALICE, "qpu", None, None), "session_already_open",
                     session_id=first.session_id, backend="qpu")
    await book.open(ALICE, "emulator", None, None)
    await book.open(BOB, "qpu", None, None)
    assert len(book.sessions) == 3


async def test_only_its_owner_or_an_admin_closes_a_session(book: SessionBook) -> None:
    session = await book.open(ALICE, "qpu", None, None)
    await refused_as(book.close(session.session_id, BOB), "session_not_found",
                     session_id=session.session_id)
    closed = await book.close(session.session_id, ALICE)
    assert closed.end_reason == "closed by its owner" and book.open_of(
        ALICE.fingerprint, "qpu") is None
    await refused_as(book.close(session.session_id, ALICE), "session_not_found",
                     session_id=session.session_id)
    other = await book.open(ALICE, "qpu", None, None)  # a new one may be opened now
    ended = await book.close(other.session_id, ROOT)
    assert ended.end_reason == "ended by an admin (root)"


async def test_an_idle_session_ends_after_its_idle_timeout(
        book: SessionBook, clock: FakeClock) -> None:
    session = await book.open(ALICE, "qpu", None, 30)
    live = {"n": 1}

    def live_jobs(owner: str, backend: str) -> int:
        return live["n"] if (owner, backend) == (ALICE.fingerprint, "qpu") else 0

    clock.advance(100)
    assert await book.watch(live_jobs) == []  # a job is live: not idle however long
    live["n"] = 0
    assert await book.watch(live_jobs) == []  # idle from now
    clock.advance(29.999)
    assert await book.watch(live_jobs) == []
    live["n"] = 1
    assert await book.watch(live_jobs) == []  # a job again: the idle time starts over
    live["n"] = 0
    await book.watch(live_jobs)
    clock.advance(30)
    [ended] = await book.watch(live_jobs)
    assert ended.session_id == session.session_id and ended.end_reason == "idle for 30 s"


async def test_a_session_ends_at_its_maximum_length_even_while_busy(
        book: SessionBook, clock: FakeClock) -> None:
    await book.open(ALICE, "qpu", 100, None)
    await book.handed_over(ALICE.fingerprint, "qpu")
    clock.advance(99.999)
    assert book.holder("qpu", clock.now()) is not None
    assert await book.watch(lambda owner, backend: 1) == []
    clock.advance(0.001)
    assert book.holder("qpu", clock.now()) is None  # at its length: holds nothing already
    [ended] = await book.watch(lambda owner, backend: 1)
    assert ended.end_reason == "reached its maximum length (100 s)"
    assert book.holder("qpu", T0) is None


async def test_sessions_survive_a_restart(store: SqliteJobStore, clock: FakeClock) -> None:
    book = SessionBook(store, clock, LIMITS)
    session = await book.open(ALICE, "qpu", None, None)
    await book.handed_over(ALICE.fingerprint, "qpu")
    again = SessionBook(store, clock, LIMITS)
    await again.load()
    holder = again.holder("qpu", T0)
    assert holder is not None and holder.session_id == session.session_id
    assert holder.role is Role.DEVELOPER and holder.opened_at == T0


async def test_the_earliest_begun_session_holds_a_backend(
        book: SessionBook, clock: FakeClock) -> None:
    await book.open(ALICE, "qpu", None, None)
    bob = await book.open(BOB, "qpu", None, None)
    await book.handed_over(BOB.fingerprint, "qpu")
    clock.advance(1)
    await book.handed_over(ALICE.fingerprint, "qpu")
    holder = book.holder("qpu", T0)
    assert holder is not None and holder.session_id == bob.session_id

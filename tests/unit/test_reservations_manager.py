"""Bookings, sessions and budgets through the JobManager on a fake clock: who is handed a
job when a window opens and closes, when a session ends, when a budget is spent and when
it resets, and what a queued job's status detail says meanwhile (job_manager/turns.py).

Driven over real stores (tests/unit/test_job_rules.py's Harness). Time moves only when a
test moves it; the leader's watch (job_manager/phases/liveness.py) is run one round at a
time by :func:`watch_round`, as it runs every few seconds in the service.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backend_manager import ServiceStatus
from common.identity import Principal, Role, fingerprint
from common.timestamps import EARLIEST, LATEST
from job_manager.budgets import Budget, BudgetRules, Period
from job_manager.ledger import Ledger
from job_manager.manager import Assignment, ExecutionReport, JobManager
from job_manager.model import BackendTimestamps, JobRecord, JobStatus
from job_manager.sessions import SessionLimits
from tests.helpers import refused_as
from tests.unit.test_job_rules import ALICE, BOB, Harness, h

__all__ = ["h"]

ROOT = Principal("root", Role.ADMIN, fingerprint("token-root"))
T0 = datetime(2026, 1, 1, tzinfo=UTC)  # the Harness's FakeClock starts here
HOUR = timedelta(hours=1)
HOUR_S = HOUR.total_seconds()
SHOTS = 100  # each test job's shots (tests/unit/test_job_rules.py's spec)
LONG_POLL_S = 10 * 86400.0  # a waiting node's wait, past every move of the fake clock


def shots_of(record: JobRecord) -> int:
    return SHOTS


def spoken(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def with_settings(h: Harness, **settings: Any) -> JobManager:
    """The harness's manager, replaced by one with ``settings``."""
    h.manager.shutdown()
    h.manager = h.new_manager(**settings)
    return h.manager


async def restarted(h: Harness, **settings: Any) -> JobManager:
    """The process stops; a new one with ``settings`` opens the same files and recovers."""
    h.manager.shutdown()
    await h.jobs.close()
    await h.payloads.close()
    h.jobs, h.payloads = h._open_stores()
    h.manager = h.new_manager(**settings)
    await h.manager.recover()
    return h.manager


async def watch_round(manager: JobManager) -> None:
    """One round of the leader's watch: deadlines, nodes, sessions ended, waiting nodes
    woken. A round that fails raises here."""
    rested = asyncio.Event()

    async def rest(ledger: Ledger) -> None:  # the sleep between rounds, never over
        rested.set()
        await asyncio.Future()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Ledger, "until_next_deadline", rest)
        loop = asyncio.ensure_future(manager.watch_deadlines())
        resting = asyncio.ensure_future(rested.wait())
        await asyncio.wait([loop, resting], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        resting.cancel()
        if loop.done():
            loop.result()  # the round failed: say how
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert rested.is_set(), "the watch never finished its round"
    await manager.background_done(5)


async def parked(manager: JobManager, backend: str = "emulator") -> asyncio.Future[
        Assignment | None]:
    """A node that waits for ``backend``'s work (a long poll), parked."""
    waiting = asyncio.ensure_future(manager.assign(backend, wait_s=LONG_POLL_S))
    for _ in range(50):
        if manager.waiting_nodes(backend):
            return waiting
        await asyncio.sleep(0.01)
    raise AssertionError(f"no node waits for {backend}")


def asking(manager: JobManager, backend: str = "emulator") -> asyncio.Future[
        Assignment | None]:
    """A node that asks for ``backend``'s work and would wait for it (a long poll)."""
    return asyncio.ensure_future(manager.assign(backend, wait_s=LONG_POLL_S))


async def still_waiting(waiting: asyncio.Future[Assignment | None]) -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)
    assert not waiting.done(), f"handed {waiting.result()} while it should wait"


async def handed(waiting: asyncio.Future[Assignment | None]) -> str:
    assignment = await asyncio.wait_for(waiting, 10)
    assert assignment is not None, "the waiting node got nothing"
    return assignment.record.job_id


async def next_job(manager: JobManager, backend: str = "emulator") -> str:
    """The job a node asking now (no wait) is handed, "" for none."""
    assignment = await manager.assign(backend)
    return assignment.record.job_id if assignment is not None else ""


async def detail(h: Harness, job_id: str, principal: Principal) -> str:
    return h.manager.status_detail(await h.manager.status(principal, job_id))


async def run_for(h: Harness, job_id: str, qpu_s: float) -> JobRecord:
    """The node runs the job for ``qpu_s`` seconds of QPU time and reports it completed."""
    started = h.clock.now()
    h.clock.advance(qpu_s)
    await h.upload_result(job_id)
    stamps = BackendTimestamps(execution_started_at=started,
                               execution_finished_at=started + timedelta(seconds=qpu_s))
    return await h.manager.report(ExecutionReport(job_id, JobStatus.COMPLETED,
                                                  timestamps=stamps))


# --- bookings -------------------------------------------------------------------------------
async def test_a_window_holds_its_users_jobs_until_it_opens_then_admits_only_them_until_it_ends(
        h: Harness) -> None:
    manager = h.manager
    booking = await manager.book(ROOT, "emulator", T0 + HOUR, T0 + 2 * HOUR, ("alice",))
    alices = await h.submit(ALICE)
    bobs = await h.submit(BOB)
    # Before it opens: alice's job waits for her window; bob's goes although it came later.
    assert await next_job(manager) == bobs
    assert await next_job(manager) == ""
    assert (await detail(h, alices, ALICE)).endswith(
        f"; waiting for your reservation of emulator, from {spoken(T0 + HOUR)}")
    # Alice's job on another backend is not held.
    elsewhere = await h.submit(ALICE, backend="qpu")
    assert await next_job(manager, "qpu") == elsewhere
    # The window opens while a node waits: the watch's round wakes it, and alice's job goes.
    waiting = await parked(manager)
    h.clock.advance(HOUR_S - 0.001)
    await watch_round(manager)
    await still_waiting(waiting)
    h.clock.advance(0.001)
    await watch_round(manager)
    assert await handed(waiting) == alices
    # While it is open, bob's new job waits, told why and until when.
    later = await h.submit(BOB)
    assert await next_job(manager) == ""
    assert (await detail(h, later, BOB)).endswith(
        f"; emulator is reserved for other users until {spoken(T0 + 2 * HOUR)}")
    # Its end is not inside it: at the end, bob's job goes.
    waiting = await parked(manager)
    h.clock.advance(HOUR_S)
    await watch_round(manager)
    assert await handed(waiting) == later
    assert [b.booking_id for b in await manager.bookings()] == [booking.booking_id]


async def test_a_maintenance_window_switches_the_status_at_its_start_and_back_at_its_end(
        h: Harness) -> None:
    manager = with_settings(h, node_quiet_s=10 * 86400.0)  # no word of quiet nodes here
    before = await h.submit(ALICE)
    admins = await h.submit(ROOT)
    await manager.book(ROOT, "emulator", T0 + HOUR, T0 + 2 * HOUR, (), "new mirrors")
    announced = f"maintenance booked from {spoken(T0 + HOUR)} to {spoken(T0 + 2 * HOUR)}"
    assert manager.service_status("emulator", ALICE) == (ServiceStatus.AVAILABLE, announced)
    assert manager.service_status("qpu", ALICE) == (ServiceStatus.AVAILABLE, "")
    h.clock.advance(HOUR_S)
    inside = f"in maintenance until {spoken(T0 + 2 * HOUR)}: new mirrors"
    for principal in (ALICE, ROOT):
        assert manager.service_status("emulator", principal) == (
            ServiceStatus.MAINTENANCE, inside)
    # No one is handed a job, an admin neither; new jobs are refused as for any maintenance.
    assert await next_job(manager) == ""
    assert (await detail(h, before, ALICE)).endswith(
        f"; emulator is in maintenance until {spoken(T0 + 2 * HOUR)}")
    assert (await detail(h, admins, ROOT)).endswith(
        f"; emulator is in maintenance until {spoken(T0 + 2 * HOUR)}")
    for principal in (ALICE, ROOT):
        await refused_as(h.submit(principal), "backend_not_available", backend="emulator",
                         status="maintenance", role=principal.role.value, description=inside)
    await refused_as(manager.open_session(ALICE, "emulator"), "backend_not_available",
                     backend="emulator", status="maintenance", role="developer",
                     description=inside)
    assert await next_job(manager, "qpu") == ""  # nothing queued there; and not held
    # At its end the status is the table's again, and the queue goes in its order.
    waiting = await parked(manager)
    h.clock.advance(HOUR_S)
    assert manager.service_status("emulator", ALICE) == (ServiceStatus.AVAILABLE, "")
    await watch_round(manager)
    assert await handed(waiting) in {before, admins}
    assert await next_job(manager) in {before, admins}


async def test_a_cancelled_window_frees_its_backend_at_once(h: Harness) -> None:
    manager = h.manager
    booking = await manager.book(ROOT, "emulator", T0, T0 + HOUR, ("alice",))
    bobs = await h.submit(BOB)
    waiting = await parked(manager)
    await still_waiting(waiting)
    await manager.cancel_booking(ROOT, booking.booking_id)
    assert await handed(waiting) == bobs
    await refused_as(manager.cancel_booking(ROOT, booking.booking_id), "booking_not_found",
                     booking_id=booking.booking_id)


async def test_only_an_admin_books_or_cancels(h: Harness) -> None:
    await refused_as(h.manager.book(ALICE, "emulator", T0, T0 + HOUR, ("alice",)),
                     "admin_only", what="booking a backend")
    booking = await h.manager.book(ROOT, "emulator", T0, T0 + HOUR, ("alice",))
    await refused_as(h.manager.cancel_booking(ALICE, booking.booking_id), "admin_only",
                     what="cancelling a booking")
    await refused_as(h.manager.book(ROOT, "nowhere", T0, T0 + HOUR, ("alice",)),
                     "backend_unknown", backend="nowhere", known="emulator, qpu")


async def test_bookings_and_sessions_survive_a_restart_and_are_enforced_by_the_next_manager(
        h: Harness) -> None:
    await h.manager.book(ROOT, "emulator", T0, T0 + HOUR, ("alice",))
    session = await h.manager.open_session(BOB, "qpu")
    first = await h.submit(BOB, backend="qpu")
    assert await next_job(h.manager, "qpu") == first
    await h.manager.background_done(5)  # the session has begun
    alices_qpu = await h.submit(ALICE, backend="qpu")
    bobs_qpu = await h.submit(BOB, backend="qpu")
    bobs = await h.submit(BOB)
    manager = await restarted(h)
    assert [s.session_id for s in await manager.sessions(BOB)] == [session.session_id]
    assert await next_job(manager) == ""  # the window is alice's
    assert "reserved for other users" in await detail(h, bobs, BOB)
    assert await next_job(manager, "qpu") == bobs_qpu  # bob's session goes first
    assert await next_job(manager, "qpu") == alices_qpu


async def test_with_one_shared_queue_no_job_goes_outside_its_window(h: Harness) -> None:
    # --unify-backends: any node may be handed any backend's job; the window still holds
    # the jobs sent to its backend, whichever name the node asks under. The gate is per
    # owner, asked of the owner's first queued job (job_manager/queue.py, Gate): bob's
    # emulator job behind his held qpu job waits with it.
    manager = with_settings(h, unify_backends=True)
    await manager.book(ROOT, "qpu", T0, T0 + HOUR, ("alice",))
    bobs_qpu = await h.submit(BOB, backend="qpu")
    bobs_emulator = await h.submit(BOB)
    alices_qpu = await h.submit(ALICE, backend="qpu")
    assert await next_job(manager, "emulator") == alices_qpu
    assert await next_job(manager, "qpu") == ""
    assert "qpu is reserved for other users" in await detail(h, bobs_qpu, BOB)
    waiting = await parked(manager, "emulator")
    h.clock.advance(HOUR_S)
    await watch_round(manager)
    assert await handed(waiting) == bobs_qpu
    assert await next_job(manager, "anything") == bobs_emulator


# --- sessions -------------------------------------------------------------------------------
async def test_a_sessions_jobs_go_first_only_once_it_has_begun(h: Harness) -> None:
    manager = h.manager
    session = await manager.open_session(ALICE, "emulator")
    bobs = [await h.submit(BOB) for _ in range(2)]
    alices = await h.submit(ALICE)
    # Open, not begun: no priority, the queue's order (bob's came first).
    assert await next_job(manager) == bobs[0]
    assert (await detail(h, alices, ALICE)) == "queued: 1st of 2 on emulator"
    assert await next_job(manager) == alices  # fair share: alice's turn; the session begins
    await manager.background_done(5)
    [begun] = await manager.sessions(ALICE)
    assert begun.started_at == T0 and begun.session_id == session.session_id
    # Begun: alice's next job goes before bob's older ones, however many wait.
    more = [await h.submit(BOB) for _ in range(3)]
    second = await h.submit(ALICE)
    assert (await detail(h, more[0], BOB)).endswith(
        f"; a session of another user holds emulator, at most until "
        f"{spoken(begun.deadline)}")
    assert (await detail(h, second, ALICE)).endswith(
        f"; in your session {session.session_id}: goes before the rest of the queue")
    assert await next_job(manager) == second
    # Priority, not exclusion: with nothing of the session queued, the others go.
    assert await next_job(manager) == bobs[1]


async def test_an_idle_session_is_ended_by_the_watch_and_a_live_job_keeps_it_open(
        h: Harness) -> None:
    manager = with_settings(h, session_limits={Role.DEVELOPER: SessionLimits(
        max_length_s=3600, max_idle_timeout_s=120, default_length_s=3600,
        default_idle_timeout_s=60)})
    session = await manager.open_session(ALICE, "emulator")
    job_id = await h.submit(ALICE, timeout_s=600)
    assert await next_job(manager) == job_id
    for _ in range(3):  # a running job is not idleness, however long it runs
        h.clock.advance(100)
        await watch_round(manager)
    assert [s.is_open for s in await manager.sessions(ALICE)] == [True]
    await h.complete(job_id)
    await watch_round(manager)  # idle from here
    h.clock.advance(59.999)
    await watch_round(manager)
    assert [s.is_open for s in await manager.sessions(ALICE)] == [True]
    h.clock.advance(0.001)
    await watch_round(manager)
    [ended] = await manager.sessions(ALICE)
    assert (ended.session_id, ended.is_open, ended.end_reason) == (
        session.session_id, False, "idle for 60 s")
    assert ended.ended_at == T0 + timedelta(seconds=360)
    # Ended: a new one may be opened, and the old id names none.
    await manager.open_session(ALICE, "emulator")
    await refused_as(manager.close_session(ALICE, session.session_id), "session_not_found",
                     session_id=session.session_id)


async def test_a_session_at_its_maximum_length_is_ended_by_the_watch_and_loses_its_place(
        h: Harness) -> None:
    manager = h.manager
    session = await manager.open_session(ALICE, "emulator", max_length_s=100)
    first = await h.submit(ALICE)
    assert await next_job(manager) == first
    await manager.background_done(5)
    bobs = await h.submit(BOB)
    alices = await h.submit(ALICE)
    h.clock.advance(99.999)
    await watch_round(manager)
    assert manager.live(alices) is not None
    assert "in your session" in await detail(h, alices, ALICE)
    h.clock.advance(0.001)
    await watch_round(manager)
    [ended] = await manager.sessions(ALICE)
    assert (ended.session_id, ended.end_reason) == (
        session.session_id, "reached its maximum length (100 s)")
    assert await detail(h, bobs, BOB) == "queued: 1st of 2 on emulator"
    assert await next_job(manager) == bobs  # alice's job lost its place before bob's


async def test_an_admin_ends_anyones_session_and_no_one_else_may(h: Harness) -> None:
    session = await h.manager.open_session(ALICE, "emulator")
    await refused_as(h.manager.close_session(BOB, session.session_id), "session_not_found",
                     session_id=session.session_id)
    await refused_as(h.manager.sessions(ALICE, everyone=True), "admin_only",
                     what="listing everyone's sessions")
    ended = await h.manager.close_session(ROOT, session.session_id)
    assert (ended.is_open, ended.end_reason) == (False, "ended by an admin (root)")
    assert [s.is_open for s in await h.manager.sessions(ROOT, everyone=True)] == [False]


# --- budgets --------------------------------------------------------------------------------
def budgets(budget: Budget) -> dict[str, Any]:
    return {"budgets": BudgetRules({Role.DEVELOPER: budget}), "shots_of": shots_of}


async def test_a_spent_budget_holds_its_owners_jobs_until_the_period_resets(
        h: Harness) -> None:
    h.clock.advance(23 * 3600)  # 23:00 UTC
    manager = with_settings(h, **budgets(Budget(Period.DAY, shots=2 * SHOTS)))
    alices = [await h.submit(ALICE) for _ in range(3)]  # nothing used yet: all accepted
    bobs = await h.submit(BOB)
    admins = await h.submit(ROOT)  # no budget for admins unless set
    taken = {await next_job(manager) for _ in range(4)}
    assert taken == {alices[0], alices[1], bobs, admins}  # alice's third: 200 of 200 used
    assert await next_job(manager) == ""
    midnight = T0 + timedelta(days=1)
    assert (await detail(h, alices[2], ALICE)).endswith(
        f"; waiting: your budget for this day is spent; it resets at {spoken(midnight)}")
    await refused_as(h.submit(ALICE), "budget_spent", budget=2 * SHOTS, unit="shots",
                     period="day", used=2 * SHOTS, reset_at=spoken(midnight))
    bobs = await h.submit(BOB)  # bob's own budget is his: 100 of 200 used, counted apart
    assert await next_job(manager) == bobs
    waiting = await parked(manager)
    h.clock.advance(3600 - 0.001)
    await watch_round(manager)
    await still_waiting(waiting)
    h.clock.advance(0.001)  # midnight UTC: a new day, a new budget
    await watch_round(manager)
    assert await handed(waiting) == alices[2]
    assert await h.submit(ALICE)  # accepted again


async def test_a_restarted_manager_counts_a_spent_budget_from_the_store_before_any_hand_over(
        h: Harness) -> None:
    settings = budgets(Budget(Period.DAY, shots=2 * SHOTS))
    manager = with_settings(h, **settings)
    alices = [await h.submit(ALICE) for _ in range(3)]
    for job_id in alices[:2]:
        assert await next_job(manager) == job_id
        await h.complete(job_id)
    manager = await restarted(h, **settings)
    # Not counted yet in this term: the owner's jobs wait for the count, which reads the
    # two hand-overs from the store.
    waiting = await parked(manager)
    await manager.background_done(5)
    await still_waiting(waiting)
    assert await next_job(manager) == ""
    left = await manager.budget_left(ALICE)
    assert left is not None and (left.spent_shots, left.spent) == (2 * SHOTS, True)
    assert "your budget for this day is spent" in await detail(h, alices[2], ALICE)
    waiting.cancel()


async def test_a_restarted_manager_with_budget_left_hands_over_once_counted(h: Harness) -> None:
    settings = budgets(Budget(Period.DAY, shots=3 * SHOTS))
    with_settings(h, **settings)
    alices = []
    for _ in range(3):
        alices.append(await h.submit(ALICE))
        h.clock.advance(1)  # a restart queues them again in the order of their times
    assert await next_job(h.manager) == alices[0]
    manager = await restarted(h, **settings)
    assert await next_job(manager) == ""  # not counted yet in this term: it waits for that
    assert await handed(asking(manager)) == alices[1]  # counted (100 of 300), then looked at again
    assert await next_job(manager) == alices[2]
    left = await manager.budget_left(ALICE)
    assert left is not None and (left.spent_shots, left.spent) == (3 * SHOTS, True)


async def test_qpu_seconds_are_counted_from_the_nodes_reports(h: Harness) -> None:
    manager = with_settings(h, **budgets(Budget(Period.MONTH, qpu_seconds=10)))
    first, second, held = [await h.submit(ALICE) for _ in range(3)]
    assert await next_job(manager) == first
    await run_for(h, first, 9.5)
    assert await next_job(manager) == second  # 9.5 of 10 s: not spent yet
    await run_for(h, second, 0.5)  # 10 of 10 s: spent
    assert await next_job(manager) == ""
    assert "your budget for this month is spent" in await detail(h, held, ALICE)
    third = await h.submit(BOB)
    await refused_as(h.submit(ALICE), "budget_spent", budget="10", unit="QPU seconds",
                     period="month", used="10.0", reset_at="2026-02-01 00:00:00 UTC")
    left = await manager.budget_left(ALICE)
    assert left is not None and left.spent_qpu_s == 10.0
    assert await next_job(manager) == third


async def test_a_user_budget_replaces_the_roles_and_an_admin_budget_holds_if_set(
        h: Harness) -> None:
    rules = BudgetRules({Role.DEVELOPER: Budget(Period.DAY, shots=SHOTS),
                         Role.ADMIN: Budget(Period.DAY, shots=0)},
                        {"alice": Budget(Period.DAY, shots=5 * SHOTS)})
    manager = with_settings(h, budgets=rules, shots_of=shots_of)
    bobs = await h.submit(BOB, backend="qpu")
    assert await next_job(manager, "qpu") == bobs
    reset_at = spoken(T0 + timedelta(days=1))
    await refused_as(h.submit(BOB), "budget_spent", budget=SHOTS, unit="shots", period="day",
                     used=SHOTS, reset_at=reset_at)
    for _ in range(2):
        alices = await h.submit(ALICE)  # hers: 500 shots a day
        assert await next_job(manager) == alices
    left = await manager.budget_left(ALICE)
    assert left is not None and (left.budget.shots, left.spent_shots) == (5 * SHOTS, 2 * SHOTS)
    await refused_as(h.submit(ROOT), "budget_spent", budget=0, unit="shots", period="day",
                     used=0, reset_at=reset_at)


async def test_an_admin_has_no_budget_unless_one_is_set(h: Harness) -> None:
    manager = with_settings(h, **budgets(Budget(Period.DAY, shots=SHOTS)))
    for _ in range(3):
        job_id = await h.submit(ROOT)
        assert await next_job(manager) == job_id
    assert await manager.budget_left(ROOT) is None


# --- the words of each wait -------------------------------------------------------------------
async def test_no_booking_no_session_no_budget_no_words(h: Harness) -> None:
    job_id = await h.submit(ALICE)
    assert await detail(h, job_id, ALICE) == "queued: 1st of 1 on emulator"


async def test_a_held_job_stays_in_its_place_in_the_queue_count(h: Harness) -> None:
    await h.manager.book(ROOT, "emulator", T0, T0 + HOUR, ("bob",))
    alices = await h.submit(ALICE)
    assert await detail(h, alices, ALICE) == (
        f"queued: 1st of 1 on emulator; emulator is reserved for other users until "
        f"{spoken(T0 + HOUR)}")



# --- the extremes a wire value may reach --------------------------------------------------------
async def test_a_window_to_the_last_date_held_leaves_later_bookings_possible(h: Harness) -> None:
    # A Timestamp past the year 9999 is read as the last date a datetime holds
    # (common/timestamps.py): a window "for ever". Later writes of the bookings must not
    # trip over it, nor may a cancel of it.
    forever = await h.manager.book(ROOT, "emulator", T0, LATEST, ())
    other = await h.manager.book(ROOT, "qpu", EARLIEST, T0 + HOUR, ("alice",))
    assert h.manager.service_status("emulator", ALICE)[0] is ServiceStatus.MAINTENANCE
    await watch_round(h.manager)
    manager = await restarted(h)
    assert [b.booking_id for b in await manager.bookings()] == [
        other.booking_id, forever.booking_id]
    await manager.cancel_booking(ROOT, forever.booking_id)
    assert manager.service_status("emulator", ALICE)[0] is ServiceStatus.AVAILABLE


async def test_a_session_as_long_as_a_duration_may_be_leaves_the_watch_and_the_reads_working(
        h: Harness) -> None:
    # An operator who allows sessions of any length (a limit past what a date holds):
    # the largest Duration (315,576,000,000 s, some 10,000 years) must not break the
    # watch, the listings or the status of anyone's job.
    longest = 315_576_000_000.0
    manager = with_settings(h, session_limits={Role.DEVELOPER: SessionLimits(
        max_length_s=1e12, max_idle_timeout_s=1e12)})
    session = await manager.open_session(ALICE, "emulator", longest, longest)
    first = await h.submit(ALICE)
    assert await next_job(manager) == first
    await manager.background_done(5)
    bobs = await h.submit(BOB)
    await watch_round(manager)
    [listed] = await manager.sessions(ALICE)
    assert (listed.session_id, listed.is_open, listed.max_length_s) == (
        session.session_id, True, longest)
    assert "a session of another user holds emulator" in await detail(h, bobs, BOB)
    await h.complete(first)
    h.clock.advance(86400)
    await watch_round(manager)  # idle for a day of its 10,000 years: still open
    assert [s.is_open for s in await manager.sessions(ALICE)] == [True]
    await restarted(h, session_limits={Role.DEVELOPER: SessionLimits(
        max_length_s=1e12, max_idle_timeout_s=1e12)})
    await watch_round(h.manager)
    assert await next_job(h.manager) == bobs


# --- what a leader counts is what the next one reads ---------------------------------------------
async def test_a_given_back_job_is_counted_once_as_the_store_counts_it(h: Harness) -> None:
    settings = budgets(Budget(Period.DAY, shots=3 * SHOTS))
    manager = with_settings(h, **settings)
    job_id = await h.submit(ALICE)
    manager.give_back(await h.assign())
    await manager.background_done(5)
    assert (await h.stored(job_id)).status is JobStatus.QUEUED
    assert (await h.assign()).record.job_id == job_id
    kept = await manager.budget_left(ALICE)
    read = await (await restarted(h, **settings)).budget_left(ALICE)
    assert kept is not None and read is not None
    assert (kept.spent_shots, read.spent_shots) == (SHOTS, SHOTS)


async def test_a_periods_budget_is_passed_by_no_job_that_was_only_queued_when_it_was_reached(
        h: Harness) -> None:
    h.clock.advance(23 * 3600)
    manager = with_settings(h, **budgets(Budget(Period.DAY, shots=2 * SHOTS)))
    alices = [await h.submit(ALICE) for _ in range(4)]  # nothing used yet: all accepted
    assert {await next_job(manager) for _ in range(2)} == set(alices[:2])  # 200 of 200
    assert await next_job(manager) == ""
    h.clock.advance(3600)  # a new day
    assert {await handed(asking(manager)), await next_job(manager)} == set(alices[2:])
    day = await manager.budget_left(ALICE)
    assert day is not None
    ran_today = 2 * SHOTS  # on a day with a budget of 200 shots
    assert day.spent_shots == ran_today, "jobs that ran today are not counted today"

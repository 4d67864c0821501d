"""Bookings, sessions and budgets among the random calls of
tests/integration/test_interleavings_together.py (issue 30), and the rules they keep.

While the users and nodes act, an operator (an admin of its own) books the backend for
short windows, for one or two of the seed's users or for maintenance, lists the bookings
and cancels some; each user opens sessions of a few seconds at most, names them in
``x-mqc3-session`` or not, lists and closes them (an admin also ends others'); and one
user of each seed has a budget of a few jobs' shots a day (SCHEDULER_BUDGETS_FILE), so it
is reached within a seed. Windows and sessions last seconds: the run is on real time.

After the users are done the clients stop naming sessions and the operator cancels every
window not yet over, so the base checks meet an open backend; the budgeted user gives up,
during the drain, the jobs its spent budget holds back (they would wait for tomorrow);
after the drain an admin ends the sessions still open. Then, from what the test saw:

- [window] no job is handed over outside what the bookings allow: none of a user not in a
  booking while its window was surely open (maintenance: none at all), and none of a
  booking's user between its booking and its window's start (unless another window of
  theirs may have been open). "Surely": a hand-over is known only to lie between the
  node's ask and its receipt, a booking to be stored from its answer (or a listing that
  showed it) until a cancel of it was sent, and a window's edges are the server's wall
  clock read into the test's monotonic record once per seed; EDGE_MS at each edge covers
  that reading (a slewing wall clock drifts well under a millisecond a second).
- [session-bound] no session holds its backend past opened_at + max_length, plus the
  liveness watch's period (job_manager/watchdog.py MAX_SLEEP_S, 5 s) and WATCH_LAG_S (2 s)
  for that round's own work on a busy machine: no listing sent after that shows it
  open, no end is stamped after it, and no waiting job is told after it that the session
  holds the backend. A listing sent after a CloseSession was answered, or after another
  answer showed it ended, shows it ended; ends_by is opened_at + max_length. In AWS mode a
  failover (no leader, so no watch) inside that span excuses it.
- [budget] no budget is exceeded by more than the jobs already running when it was
  reached: no job of the budgeted user is first handed over (asked for by its node) after
  the jobs nodes had received of that user reached the budget, and the use GetUsage
  reports after the drain is at most the budget, or the shots of the jobs first handed
  over until it was reached if more. A seed that spans a UTC midnight (a new period) is
  not held to it.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from job_manager.watchdog import MAX_SLEEP_S
from pb.mqc3_scheduler.extension.v1 import jobs_pb2, jobs_pb2_grpc, reservations_pb2_grpc
from pb.mqc3_scheduler.extension.v1 import reservations_pb2 as rpb
from scheduler.messages import convert
from tests.helpers import Clients
from tests.integration import test_interleavings as base

SESSION = "x-mqc3-session"
RESERVATION_METHODS = {"OpenSession", "CloseSession", "ListSessions", "BookBackend",
                       "CancelBooking", "ListBookings"}
SHOTS = 100  # every submission's n_shots (tests/helpers.py submit_request)
EDGE_MS = 50.0  # a window's edge, read into the record (see the module's docstring)
WATCH_PERIOD_S = MAX_SLEEP_S  # the liveness watch ends sessions at least this often
# That round's own work before it ends sessions (the deadlines due, each a store write) and
# a loaded machine's event loop.
WATCH_LAG_S = 2.0
OPERATOR = ("ops", "admin")  # books and cancels; no job of its own
BUDGET_ROLE = "developer"
BUDGET_SEEDS = 1000  # budgeted users written in the file: one per seed (reused after)
# A booking's window: starts this soon after it is booked, lasts this long (seconds).
WINDOW_STARTS_S = (0.02, 0.3)
WINDOW_LASTS_S = (0.2, 0.6)
MAINTENANCE_LASTS_S = (0.1, 0.3)
SESSION_LENGTH_S = (0.5, 2.5)
SESSION_IDLE_S = (0.3, 1.5)
_HOLDER = re.compile(r"a session of another user holds (\S+), at most until "
                     r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


# --- the budgets --------------------------------------------------------------------------
def budgeted_user(seed: int) -> tuple[str, int]:
    """The seed's budgeted user and its budget of shots a day: 2 to 5.5 jobs' worth, so
    that it is reached within a seed, at a job's edge or inside one."""
    n = (seed - 1) % BUDGET_SEEDS + 1
    return f"dora{n}", 200 + 50 * (n % 8)


def write_budgets(path: Path) -> Path:
    """SCHEDULER_BUDGETS_FILE with every seed's budgeted user (a seed has its own, as a
    day's use carries over to the next seed of the same service)."""
    tables = []
    for seed in range(1, BUDGET_SEEDS + 1):
        name, shots = budgeted_user(seed)
        tables.append(f'[users."{name}"]\nperiod = "day"\nshots = {shots}\n')
    path.write_text("\n".join(tables))
    return path


# --- the record -----------------------------------------------------------------------------
@dataclass
class BookingSeen:
    """A booking as the operator asked for it, and what the answers told of it since."""

    note: str  # names the request: a listing tells which request made a booking
    users: tuple[str, ...]  # () for maintenance
    starts_ms: float
    ends_ms: float
    booked: base.Call
    booking_id: str = ""
    seen_ms: float = math.inf  # when a listing's answer showed it stored
    cancels: list[base.Call] = field(default_factory=list)

    @property
    def stored(self) -> bool:
        """Whether it was ever stored: answered, or seen by a listing (a booking whose
        answer was lost and that no listing showed was never written)."""
        return self.booked.ok or self.seen_ms < math.inf

    def surely_stored(self) -> tuple[float, float]:
        """When it was stored for sure: from its answer (or a listing) until a cancel of
        it was sent (a cancel takes effect between its call and its answer)."""
        since = min(self.booked.ended_ms if self.booked.ok else math.inf, self.seen_ms)
        return since, min((c.started_ms for c in self.cancels), default=math.inf)

    def maybe_open(self) -> tuple[float, float]:
        """When its window may have been open: from the booking call at the earliest to an
        answered cancel at the latest."""
        if not self.stored:
            return math.inf, -math.inf
        until = min((c.ended_ms for c in self.cancels if c.ok), default=math.inf)
        return (max(self.starts_ms, self.booked.started_ms) - EDGE_MS,
                min(self.ends_ms, until) + EDGE_MS)

    def for_whom(self) -> str:
        return f"reserved for {', '.join(self.users)}" if self.users else "in maintenance"


@dataclass(frozen=True)
class SessionView:
    """One answer's word on a session."""

    call: base.Call
    is_open: bool
    opened_at_ms: float
    ends_by_ms: float
    max_length_s: float
    ended_at_ms: float | None
    end_reason: str


@dataclass
class SessionSeen:
    session_id: str
    owner: str
    views: list[SessionView] = field(default_factory=list)
    closes: list[base.Call] = field(default_factory=list)


@dataclass(frozen=True)
class HandOver:
    """A job a node received: it was handed over between the node's ask and its receipt."""

    job_id: str
    node: str
    asked_ms: float
    received_ms: float


class TurnsRecord:
    """What the test saw of the bookings, sessions and budgets of one seed."""

    def __init__(self, seed: int, t0_monotonic_s: float, now_monotonic_s: float) -> None:
        # The record's clock is monotonic from the seed's start; a window's edges are the
        # server's wall clock. One reading of both turns one into the other.
        self.t0_wall = datetime.now(UTC) - timedelta(seconds=now_monotonic_s - t0_monotonic_s)
        self.seed = seed
        self.bookings: dict[str, BookingSeen] = {}  # by note
        self.sessions: dict[str, SessionSeen] = {}  # by id
        self.naming: dict[str, str] = {}  # user -> the session its submissions name
        self.handovers: list[HandOver] = []
        self.details: list[tuple[base.Call, str]] = []  # GetJobStatus's status_detail
        self.budgeted, self.budget_shots = budgeted_user(seed)
        self.usage: list[tuple[base.Call, int]] = []  # GetUsage's shots_used of the budgeted
        self.numbers = 0

    def ms(self, moment: datetime) -> float:
        return (moment - self.t0_wall).total_seconds() * 1000

    def moment(self, ms: float) -> datetime:
        return self.t0_wall + timedelta(milliseconds=ms)

    def next_note(self) -> str:
        self.numbers += 1
        return f"s{self.seed}/b{self.numbers}"

    def spans_midnight(self, now_ms: float) -> bool:
        return self.t0_wall.date() != self.moment(now_ms).date()


class TurnsWorld(base.World):
    """The base world that also books, opens sessions and reads usage, names a user's
    session on its submissions, and notes every hand-over's times and every waiting
    reason."""

    def __init__(self, clients: Clients, sent: dict[str, str], seed: int,
                 users: list[base.User], extension: grpc.aio.Channel) -> None:
        super().__init__(clients, sent, seed, users)
        self.reservations = reservations_pb2_grpc.ReservationsServiceStub(extension)
        self.jobs = jobs_pb2_grpc.JobsServiceStub(extension)
        self.turns = TurnsRecord(seed, self._t0, time.monotonic())

    def stub(self, method: str) -> Any:
        if method in RESERVATION_METHODS:
            return self.reservations
        if method == "GetUsage":
            return self.jobs
        return super().stub(method)

    async def rpc(self, actor: str, method: str, request: Any, deadline_s: float,
                  metadata: tuple[tuple[str, str], ...] = (), job_id: str = "",
                  tag: str = "", key: str = "") -> tuple[base.Call, Any]:
        if method == "SubmitJob" and actor in self.turns.naming:
            metadata = (*metadata, (SESSION, self.turns.naming[actor]))
        call, response = await super().rpc(actor, method, request, deadline_s, metadata,
                                           job_id, tag, key)
        if method == "GetJobStatus" and call.ok and response.status_detail:
            self.turns.details.append((call, response.status_detail))
        return call, response

    async def assign(self, node: str, deadline_s: float,
                     wait_ms: int = 0) -> tuple[base.Call, base.Held | None]:
        call, held = await super().assign(node, deadline_s, wait_ms)
        if held is not None:
            self.turns.handovers.append(HandOver(held.job_id, node, call.started_ms,
                                                 call.ended_ms))
        return call, held

    def disturbed(self, started_ms: float, ended_ms: float) -> bool:
        """Whether a failover overlaps the span (none in one process)."""
        return False




def _moment(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


# --- the operator: books, lists and cancels ----------------------------------------------
OperatorStep = Callable[[TurnsWorld, base.User, random.Random], Awaitable[None]]


async def book_for_users(world: TurnsWorld, ops: base.User, rng: random.Random) -> None:
    users = [user.name for user in world.users if user.role != "admin" or rng.random() < 0.5]
    users.append(world.turns.budgeted)
    await _book(world, ops, rng, tuple(rng.sample(users, k=min(len(users), rng.randint(1, 2)))),
                WINDOW_LASTS_S)


async def book_maintenance(world: TurnsWorld, ops: base.User, rng: random.Random) -> None:
    await _book(world, ops, rng, (), MAINTENANCE_LASTS_S)


async def _book(world: TurnsWorld, ops: base.User, rng: random.Random,
                users: tuple[str, ...], lasts_s: tuple[float, float]) -> None:
    """Book a window after the last one booked, or now and then one that may overlap it
    (refused FAILED_PRECONDITION)."""
    now_ms = world._now_ms()
    booked = [b.ends_ms for b in world.turns.bookings.values() if b.booked.ok
              and not any(c.ok for c in b.cancels)]
    after_ms = now_ms if rng.random() < 0.2 else max([now_ms, *booked])
    starts_ms = after_ms + rng.uniform(*WINDOW_STARTS_S) * 1000
    ends_ms = starts_ms + rng.uniform(*lasts_s) * 1000
    note = world.turns.next_note()
    request = rpb.BookBackendRequest(token=ops.token, backend=base.BACKEND, users=users,
                                     maintenance=not users, note=note)
    request.starts_at.CopyFrom(convert.timestamp(world.turns.moment(starts_ms)))
    request.ends_at.CopyFrom(convert.timestamp(world.turns.moment(ends_ms)))
    call, response = await world.rpc(ops.name, "BookBackend", request, base.PATIENT_S)
    seen = world.turns.bookings[note] = BookingSeen(note, users, starts_ms, ends_ms, call)
    call.answer = f"{note} {seen.for_whom()} +{starts_ms:.0f}..{ends_ms:.0f} ms"
    if call.ok:
        seen.booking_id = response.booking.booking_id
        call.answer += f" as {seen.booking_id}"


async def cancel_booking(world: TurnsWorld, ops: base.User, rng: random.Random) -> None:
    """Cancel a known booking whose window has not ended, most often one open now (now
    and then one cancelled already: refused NOT_FOUND)."""
    now_ms = world._now_ms()
    known = [b for b in world.turns.bookings.values() if b.booking_id and b.ends_ms > now_ms]
    opened = [b for b in known if b.starts_ms <= now_ms]
    if known:
        await _cancel(world, ops, rng.choice(opened if opened and rng.random() < 0.8
                                             else known))


async def _cancel(world: TurnsWorld, ops: base.User, booking: BookingSeen) -> None:
    call, _ = await world.rpc(ops.name, "CancelBooking", rpb.CancelBookingRequest(
        token=ops.token, booking_id=booking.booking_id), base.PATIENT_S)
    call.answer = booking.note
    booking.cancels.append(call)


async def list_bookings(world: TurnsWorld, ops: base.User, rng: random.Random,
                        include_ended: bool = False) -> None:
    call, response = await world.rpc(ops.name, "ListBookings", rpb.ListBookingsRequest(
        token=ops.token, backend=base.BACKEND, include_ended=include_ended), base.PATIENT_S)
    if not call.ok:
        return
    for listed in response.bookings:
        seen = world.turns.bookings.get(listed.note)
        if seen is not None:  # this seed's (the service keeps earlier seeds' for a week)
            seen.booking_id = seen.booking_id or listed.booking_id
            seen.seen_ms = min(seen.seen_ms, call.ended_ms)
    call.answer = f"{len(response.bookings)} bookings"


OPERATOR_STEPS: tuple[tuple[OperatorStep, int], ...] = (
    (book_for_users, 6),
    (book_maintenance, 1),
    (cancel_booking, 1),
    (list_bookings, 1),
)


async def operator_actor(world: TurnsWorld, ops: base.User, done: asyncio.Event) -> Counter[str]:
    schedule = random.Random(f"{world.seed}/operator")
    steps, weights = zip(*OPERATOR_STEPS, strict=True)
    taken: Counter[str] = Counter()
    first = True  # a booking at once: the users' part of a seed may last a second only
    while not done.is_set():
        step = book_for_users if first else schedule.choices(steps, weights)[0]
        first = False
        rng = random.Random(schedule.getrandbits(64))
        taken[step.__name__] += 1
        await step(world, ops, rng)
        await asyncio.sleep(schedule.uniform(0.05, 0.2))
    return taken


# --- the users' sessions -------------------------------------------------------------------
def _note_session(world: TurnsWorld, owner: str, call: base.Call,
                  session: rpb.Session) -> SessionSeen:
    turns = world.turns
    seen = turns.sessions.setdefault(session.session_id, SessionSeen(session.session_id, owner))
    seen.views.append(SessionView(
        call, session.open, turns.ms(_moment(session.opened_at)),
        turns.ms(_moment(session.ends_by)), session.max_length.ToTimedelta().total_seconds(),
        turns.ms(_moment(session.ended_at)) if session.HasField("ended_at") else None,
        session.end_reason))
    if not session.open and turns.naming.get(owner) == session.session_id:
        del turns.naming[owner]  # told it ended: the client stops naming it
    return seen


def _open_one(world: TurnsWorld, user: base.User) -> SessionSeen | None:
    """The user's session the test last saw open."""
    mine = [s for s in world.turns.sessions.values()
            if s.owner == user.name and s.views and s.views[-1].is_open]
    return mine[-1] if mine else None


async def open_session(world: TurnsWorld, user: base.User, rng: random.Random) -> None:
    request = rpb.OpenSessionRequest(token=user.token, backend=base.BACKEND)
    if rng.random() < 0.9:  # else the role's defaults (an hour; a minute idle)
        request.max_length.CopyFrom(convert.duration(rng.uniform(*SESSION_LENGTH_S)))
        request.idle_timeout.CopyFrom(convert.duration(rng.uniform(*SESSION_IDLE_S)))
    call, response = await world.rpc(user.name, "OpenSession", request, base.PATIENT_S)
    if call.ok:
        seen = _note_session(world, user.name, call, response.session)
        call.answer = f"session {seen.session_id}"
        if rng.random() < 0.5:
            world.turns.naming[user.name] = seen.session_id


async def close_session(world: TurnsWorld, user: base.User, session: SessionSeen) -> None:
    call, response = await world.rpc(user.name, "CloseSession", rpb.CloseSessionRequest(
        token=user.token, session_id=session.session_id), base.PATIENT_S)
    call.answer = f"session {session.session_id}"
    session.closes.append(call)
    if call.ok:
        _note_session(world, session.owner, call, response.session)
    elif call.code == "NOT_FOUND" and world.turns.naming.get(session.owner) == session.session_id:
        del world.turns.naming[session.owner]  # ended meanwhile


async def list_sessions(world: TurnsWorld, user: base.User, everyone: bool = False) -> None:
    call, response = await world.rpc(user.name, "ListSessions", rpb.ListSessionsRequest(
        token=user.token, all_users=everyone), base.PATIENT_S)
    if not call.ok:
        return
    for session in response.sessions:
        if world.turns.ms(_moment(session.opened_at)) < 0:
            continue  # an earlier seed's (listed for a day)
        owner = session.owner_name or user.name
        _note_session(world, owner, call, session)
    call.answer = f"{len(response.sessions)} sessions"


async def end_anothers(world: TurnsWorld, admin: base.User, rng: random.Random) -> None:
    """An admin ends a session of another user."""
    await list_sessions(world, admin, everyone=True)
    others = [s for s in world.turns.sessions.values()
              if s.owner != admin.name and s.views and s.views[-1].is_open]
    if others:
        await close_session(world, admin, rng.choice(others))


async def session_actor(world: TurnsWorld, user: base.User, done: asyncio.Event) -> Counter[str]:
    """Opens a session now and then, lists and closes it, or lets it run into its idle
    timeout or its length; an admin now and then ends another's."""
    schedule = random.Random(f"{world.seed}/{user.name}/sessions")
    taken: Counter[str] = Counter()
    while not done.is_set():
        await asyncio.sleep(schedule.uniform(0.1, 0.4))
        rng = random.Random(schedule.getrandbits(64))
        mine = _open_one(world, user)
        if user.role == "admin" and rng.random() < 0.2:
            taken["end_anothers"] += 1
            await end_anothers(world, user, rng)
        elif mine is None and rng.random() < 0.6:
            taken["open_session"] += 1
            await open_session(world, user, rng)
        elif mine is not None and rng.random() < 0.4:
            taken["close_session"] += 1
            await close_session(world, user, mine)
        elif rng.random() < 0.5:
            taken["list_sessions"] += 1
            await list_sessions(world, user)
    return taken


# --- the budgeted user ----------------------------------------------------------------------
# The base users' steps that submit, cancel and poll; fewer of them than a base user takes,
# as its budget refuses most submissions after its first few jobs.
BUDGETED_STEPS: tuple[tuple[base.Step, int], ...] = (
    (base.submit_plain, 3),
    (base.retry_after_cut, 2),
    (base.keyed_retry, 1),
    (base.double_cancel, 1),
    (base.lost_assignment, 2),
    (base.cancel_known, 1),
    (base.poll_known, 2),
)
BUDGETED_USER_STEPS = 12


async def budgeted_actor(world: TurnsWorld, user: base.User) -> Counter[str]:
    schedule = random.Random(f"{world.seed}/{user.name}")
    steps, weights = zip(*BUDGETED_STEPS, strict=True)
    taken: Counter[str] = Counter()
    for _ in range(BUDGETED_USER_STEPS):
        step = schedule.choices(steps, weights)[0]
        rng = random.Random(schedule.getrandbits(64))
        taken[f"{step.__name__} (budgeted)"] += 1
        await step(world, user, rng)
        await asyncio.sleep(schedule.uniform(0, 0.01))
    return taken


# --- after the users: an open backend for the base checks ----------------------------------
async def end_windows(world: TurnsWorld, ops: base.User) -> None:
    """Learn every booking this seed made (a lost answer's too) and cancel each window
    not over yet; the clients stop naming sessions."""
    world.turns.naming.clear()
    await list_bookings(world, ops, random.Random(), include_ended=True)
    now_ms = world._now_ms()
    for booking in world.turns.bookings.values():
        answered = [c for c in booking.cancels if c.ok or c.code == "NOT_FOUND"]
        if booking.booking_id and booking.ends_ms > now_ms - EDGE_MS and not answered:
            await _cancel(world, ops, booking)


async def give_up_held_back(world: TurnsWorld) -> None:
    """The budgeted user cancels its jobs still queued once nothing else is: its spent
    budget holds them back until the next day."""
    owner = next((u for u in world.owner_of_job.values()
                  if u.name == world.turns.budgeted), None)
    if owner is None:
        return
    for job_id, status in list(world.final.items()):
        if status == "QUEUED" and world.owner_of_job.get(job_id) is owner:
            await world.cancel(owner, job_id, base.PATIENT_S)


async def end_sessions(world: TurnsWorld, admin: base.User) -> None:
    """An admin lists every session and ends those still open."""
    await list_sessions(world, admin, everyone=True)
    await asyncio.gather(*(close_session(world, admin, session)
                           for session in list(world.turns.sessions.values())
                           if session.views and session.views[-1].is_open))


async def read_usage(world: TurnsWorld, budgeted: base.User) -> None:
    call, response = await world.rpc(budgeted.name, "GetUsage", jobs_pb2.GetUsageRequest(
        token=budgeted.token), base.PATIENT_S)
    if call.ok and response.usage and response.usage[0].HasField("budget"):
        used = response.usage[0].budget.shots_used
        call.answer = f"{used} of {response.usage[0].budget.shots} shots used"
        world.turns.usage.append((call, used))


# --- the rules --------------------------------------------------------------------------------
def broken_rules(world: TurnsWorld) -> list[base.Violation]:
    return [*_windows(world), *_session_bounds(world), *_budget(world)]


def requeued_then_cancelled(world: TurnsWorld, violation: base.Violation) -> bool:
    """A [cancel-truth] break of the base rules that is no break here: a refusal that said
    RUNNING, of a job no node received that ended CANCELLED, when the store counts a
    requeue of it (so it was RUNNING: its answer lost in transit, or its node gone). The
    base rule excuses such a job once a later node received it ("RUNNING, then lost"); here
    none may, as a spent budget holds it back until its owner cancels it (seen standalone,
    seed 19, the job requeued by its timeout)."""
    return (violation.rule == "cancel-truth" and " said RUNNING, but no node ever got the job "
            "and it ended CANCELLED" in violation.text
            and any(world.requeues.get(job_id, 0) > 0 for job_id in violation.about))


def _owner(world: TurnsWorld, job_id: str) -> str:
    """Whose job it is: known from its submission, or from the program a node received or
    the server sent (each names its user)."""
    owner = world.owner_of_job.get(job_id) or world.owner_of_tag.get(
        world.tag_of_job.get(job_id) or world.sent.get(job_id, ""))
    return owner.name if owner is not None else ""


def _windows(world: TurnsWorld) -> Iterator[base.Violation]:
    bookings = [b for b in world.turns.bookings.values() if b.stored]
    for handover in world.turns.handovers:
        owner = _owner(world, handover.job_id)
        for booking in bookings:
            problem = _outside(booking, bookings, owner, handover) if owner else ""
            if problem:
                yield base.Violation(
                    "window", f"job {handover.job_id} of {owner} was handed to "
                    f"{handover.node} (asked +{handover.asked_ms:.0f} ms, received "
                    f"+{handover.received_ms:.0f} ms) {problem}", frozenset({handover.job_id}),
                    calls=(booking.booked.n, *(c.n for c in booking.cancels)))


def _outside(booking: BookingSeen, bookings: list[BookingSeen], owner: str,
             handover: HandOver) -> str:
    """Why the bookings surely forbade this hand-over, or ""."""
    since, until = booking.surely_stored()
    asked, received = handover.asked_ms, handover.received_ms
    where = (f"{booking.note} ({booking.for_whom()}, +{booking.starts_ms:.0f}.."
             f"{booking.ends_ms:.0f} ms, stored surely +{since:.0f}..{until:.0f} ms)")
    opened = max(booking.starts_ms, since) + EDGE_MS, min(booking.ends_ms, until) - EDGE_MS
    if owner not in booking.users and opened[0] <= asked and received <= opened[1]:
        return f"while the window of {where} was open"
    waiting = since + EDGE_MS, min(booking.starts_ms, until) - EDGE_MS
    if owner in booking.users and waiting[0] <= asked and received <= waiting[1] \
            and not any(_may_admit(other, owner, asked, received) for other in bookings):
        return f"before the window of {where} opened: its jobs wait for it"
    return ""


def _may_admit(booking: BookingSeen, owner: str, asked_ms: float, received_ms: float) -> bool:
    opens, closes = booking.maybe_open()
    return owner in booking.users and opens < received_ms and asked_ms < closes


def _session_bounds(world: TurnsWorld) -> Iterator[base.Violation]:
    bound_ms = (WATCH_PERIOD_S + WATCH_LAG_S) * 1000
    for session in world.turns.sessions.values():
        ended_ms = min([v.call.ended_ms for v in session.views if not v.is_open]
                       + [c.ended_ms for c in session.closes if c.ok], default=math.inf)
        for view in session.views:
            problem = _past_its_bound(world, view, bound_ms)
            if view.is_open and view.call.started_ms > ended_ms:
                problem = f"was shown open by #{view.call.n}, sent after it was seen ended"
            if problem:
                yield base.Violation("session-bound", f"session {session.session_id} of "
                                     f"{session.owner} {problem}", call_n=view.call.n,
                                     calls=tuple(v.call.n for v in session.views))
    yield from _holders_past_bound(world, bound_ms)


def _past_its_bound(world: TurnsWorld, view: SessionView, bound_ms: float) -> str:
    if abs(view.ends_by_ms - view.opened_at_ms - view.max_length_s * 1000) > 1:
        return (f"ends by +{view.ends_by_ms:.0f} ms, not opened_at (+{view.opened_at_ms:.0f}"
                f" ms) + max_length ({view.max_length_s:g} s)")
    limit_ms = view.ends_by_ms + bound_ms
    if view.is_open and view.call.started_ms > limit_ms \
            and not world.disturbed(view.ends_by_ms, view.call.started_ms):
        return (f"was shown open by #{view.call.n} at +{view.call.started_ms:.0f} ms, past "
                f"its length's end (+{view.ends_by_ms:.0f} ms) and a round of the watch")
    if view.ended_at_ms is not None and view.ended_at_ms > limit_ms \
            and not world.disturbed(view.ends_by_ms, view.ended_at_ms):
        return (f"ended at +{view.ended_at_ms:.0f} ms ({view.end_reason}), past its "
                f"length's end (+{view.ends_by_ms:.0f} ms) and a round of the watch")
    return ""


def _holders_past_bound(world: TurnsWorld, bound_ms: float) -> Iterator[base.Violation]:
    """A waiting job told a session holds the backend, after that session's bound (the
    reason names its end to the second, so a second more is allowed)."""
    for call, detail in world.turns.details:
        found = _HOLDER.search(detail)
        if found is None:
            continue
        ends_by = datetime.strptime(found[2], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        limit_ms = world.turns.ms(ends_by) + 1000 + bound_ms
        if call.started_ms > limit_ms and not world.disturbed(limit_ms - bound_ms,
                                                              call.started_ms):
            yield base.Violation("session-bound", f"GetJobStatus #{call.n} at "
                                 f"+{call.started_ms:.0f} ms was told {detail!r}, past that "
                                 f"session's end and a round of the watch",
                                 frozenset({call.job_id}))


def _budget(world: TurnsWorld) -> Iterator[base.Violation]:
    turns = world.turns
    if turns.spans_midnight(world._now_ms()):
        return  # two periods in one seed: each has its own use
    firsts: dict[str, HandOver] = {}
    for handover in turns.handovers:
        if _owner(world, handover.job_id) == turns.budgeted:
            firsts.setdefault(handover.job_id, handover)
    by_receipt = sorted(firsts.values(), key=lambda h: h.received_ms)
    reached_ms, used = math.inf, 0
    for handover in by_receipt:
        used += SHOTS
        if used >= turns.budget_shots:
            reached_ms = handover.received_ms
            break
    late = [h for h in by_receipt if h.asked_ms > reached_ms]
    for handover in late:
        yield base.Violation("budget", f"job {handover.job_id} of {turns.budgeted} was first "
                             f"handed over (asked +{handover.asked_ms:.0f} ms) after its "
                             f"budget of {turns.budget_shots} shots was reached (+"
                             f"{reached_ms:.0f} ms)", frozenset({handover.job_id}))
    # Jobs the server surely handed over, though no node received the answer, were counted
    # too (when is not known): an answer noted sent, or a job that ended TIMEOUT or was
    # queued again with no receipt.
    lost = sum(1 for job_id in {*world.sent, *world.final, *world.requeues}
               if job_id not in world.received and _owner(world, job_id) == turns.budgeted
               and (job_id in world.sent or world.final.get(job_id) == "TIMEOUT"
                    or world.requeues.get(job_id, 0) > 0))
    allowed = max(turns.budget_shots, SHOTS * (len(by_receipt) - len(late) + lost))
    for call, shots_used in turns.usage:
        if shots_used > allowed:
            yield base.Violation("budget", f"GetUsage #{call.n} says {turns.budgeted} used "
                                 f"{shots_used} shots of a budget of {turns.budget_shots}: "
                                 f"more than the {allowed} of the jobs handed over until it "
                                 f"was reached ({len(by_receipt)} jobs were handed over in "
                                 f"all)", call_n=call.n,
                                 calls=tuple(c.n for c in world.calls
                                             if c.actor == turns.budgeted
                                             and c.method == "SubmitJob" and c.code)[:4])


def _inside(world: TurnsWorld, bookings: list[BookingSeen]) -> int:
    """How many hand-overs lay surely inside a window: each one the window rule judged."""
    count = 0
    for handover in world.turns.handovers:
        for booking in bookings:
            since, until = booking.surely_stored()
            if max(booking.starts_ms, since) <= handover.asked_ms \
                    and handover.received_ms <= min(booking.ends_ms, until):
                count += 1
    return count


def summary(world: TurnsWorld) -> str:
    turns = world.turns
    bookings = [b for b in turns.bookings.values() if b.stored]
    ends = Counter(v.end_reason.split(" (")[0] for s in turns.sessions.values()
                   for v in s.views[-1:] if not v.is_open)
    first_handovers = {h.job_id for h in turns.handovers
                       if _owner(world, h.job_id) == turns.budgeted}
    late_s = [(v.ended_at_ms - v.ends_by_ms) / 1000 for s in turns.sessions.values()
              for v in s.views[-1:] if v.ended_at_ms is not None
              and v.end_reason.startswith("reached")]
    return (f"{len(bookings)} bookings ({sum(1 for b in bookings if not b.users)} "
            f"maintenance, {sum(1 for b in bookings if any(c.ok for c in b.cancels))} "
            f"cancelled; {_inside(world, bookings)} hand-overs inside a window), "
            f"{len(turns.sessions)} sessions (ended: {dict(ends)}; at their length "
            f"{max(late_s, default=0):.1f} s late at most), "
            f"{turns.budgeted} ran {len(first_handovers)} jobs of a {turns.budget_shots}-shot "
            f"budget, used {[used for _, used in turns.usage]}")

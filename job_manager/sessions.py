"""Sessions: a window for an iterative workload on one backend.

A user opens a session on a backend (with a maximum length and an idle timeout, within
the limits an operator sets per role); while it is open, the jobs their token submits to
that backend are the session's. Once a session's first job is handed over, the session
holds the backend: its next queued job goes before everyone else's (job_manager/turns.py),
as IBM Quantum's sessions do. It ends when its owner or an admin closes it, when it has
had no job queued or running for its idle timeout, or when it reaches its maximum length
from its opening, which bounds how long one session can hold a backend
(docs/reservations.md, "Sessions").

Open sessions are one small document in the job store, like the bookings; the leader
decides. Idleness is seen by the leader's watch (every few seconds), from the ledger's
count of the owner's live jobs on the backend; after a restart, a session's idle time
starts again.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from common.clock import Clock
from common.identity import Principal, Role
from job_manager.stores import Document, Fence, JobStore
from message_manager import SchedulerError

DOCUMENT = "sessions"
KEEP_ENDED = timedelta(days=1)  # ended sessions still listed this long
WRITE_ATTEMPTS = 3


@dataclass(frozen=True)
class SessionLimits:
    """What one role's sessions may ask for, and what they get when they ask for nothing."""

    max_length_s: float = 8 * 3600.0
    max_idle_timeout_s: float = 600.0
    default_length_s: float = 3600.0
    default_idle_timeout_s: float = 60.0


@dataclass(frozen=True)
class Session:
    session_id: str
    owner_fingerprint: str
    owner_name: str
    role: Role
    backend: str
    opened_at: datetime
    max_length_s: float
    idle_timeout_s: float
    started_at: datetime | None = None  # its first job's hand-over
    ended_at: datetime | None = None
    end_reason: str = ""

    @property
    def deadline(self) -> datetime:
        """When it reaches its maximum length."""
        return self.opened_at + timedelta(seconds=self.max_length_s)

    @property
    def is_open(self) -> bool:
        return self.ended_at is None

    @property
    def holds(self) -> bool:
        """Whether it holds its backend (open, and its first job handed over)."""
        return self.ended_at is None and self.started_at is not None


class SessionBook:
    """The sessions of every backend, as the job store holds them."""

    def __init__(self, store: JobStore, clock: Clock, limits: dict[Role, SessionLimits],
                 fence: Fence | None = None) -> None:
        self._store = store
        self._clock = clock
        self._limits = limits
        self._fence = fence
        self._sessions: tuple[Session, ...] = ()
        self._version = 0
        self._writing = asyncio.Lock()  # one write at a time, each on the last (bookings.py)
        self._idle_since: dict[str, datetime] = {}  # open sessions with no live job

    @property
    def sessions(self) -> tuple[Session, ...]:
        return self._sessions

    async def load(self) -> None:
        self._take(await self._store.read_document(DOCUMENT))
        self._idle_since.clear()

    async def open(self, principal: Principal, backend: str, max_length_s: float | None,
                   idle_timeout_s: float | None) -> Session:
        """Open a session; None for a limit asks for the role's default."""
        limits = self._limits.get(principal.role, SessionLimits())
        length = _within("max_length_s", limits.default_length_s if max_length_s is None
                         else max_length_s, limits.max_length_s, principal.role)
        idle = _within("idle_timeout_s", limits.default_idle_timeout_s if idle_timeout_s is None
                       else idle_timeout_s, limits.max_idle_timeout_s, principal.role)
        session = Session(str(uuid.uuid4()), principal.fingerprint, principal.name,
                          principal.role, backend, self._clock.now(), length, idle)

        def add(current: tuple[Session, ...]) -> tuple[Session, ...]:
            mine = self._open_of(current, principal.fingerprint, backend)
            if mine is not None:
                raise SchedulerError("session_already_open", session_id=mine.session_id,
                                     backend=backend)
            return (*current, session)

        await self._change(add)
        return session

    async def close(self, session_id: str, by: Principal, reason: str = "") -> Session:
        """End an open session: its owner's or, for an admin, anyone's."""
        ended: list[Session] = []
        now = self._clock.now()

        def end(current: tuple[Session, ...]) -> tuple[Session, ...]:
            found = [s for s in current if s.session_id == session_id and s.is_open
                     and (by.role is Role.ADMIN or s.owner_fingerprint == by.fingerprint)]
            if not found:
                raise SchedulerError("session_not_found", session_id=session_id)
            why = reason or ("closed by its owner" if found[0].owner_fingerprint == by.fingerprint
                             else f"ended by {by.log_name}")
            ended[:] = [replace(found[0], ended_at=now, end_reason=why)]
            return tuple(ended[0] if s is found[0] else s for s in current)

        await self._change(end)
        return ended[0]

    # --- what the sessions say now ---------------------------------------------------------
    def open_of(self, owner_fingerprint: str, backend: str) -> Session | None:
        """The owner's open session on ``backend``, if any."""
        return self._open_of(self._sessions, owner_fingerprint, backend)

    def holder(self, backend: str) -> Session | None:
        """The session holding ``backend`` now, if any: the earliest opened of those that
        have begun (one at a time holds it; the others wait their turn)."""
        holding = [s for s in self._sessions if s.backend == backend and s.holds]
        return min(holding, key=lambda s: s.started_at or s.opened_at, default=None)

    async def handed_over(self, owner_fingerprint: str, backend: str) -> None:
        """A job of the owner's open session was handed over: the session begins, if it
        had not."""
        session = self.open_of(owner_fingerprint, backend)
        if session is None or session.started_at is not None:
            return
        now = self._clock.now()

        def start(current: tuple[Session, ...]) -> tuple[Session, ...]:
            return tuple(replace(s, started_at=s.started_at or now)
                         if s.session_id == session.session_id else s for s in current)

        await self._change(start)

    async def watch(self, live_jobs: Callable[[str, str], int]) -> list[Session]:
        """End the sessions that reached their length or were idle too long (``live_jobs``:
        the owner's QUEUED and RUNNING jobs on a backend); the sessions ended."""
        now = self._clock.now()
        due: dict[str, str] = {}
        for s in self._sessions:
            if not s.is_open:
                continue
            if now >= s.deadline:
                due[s.session_id] = f"reached its maximum length ({s.max_length_s:g} s)"
            elif live_jobs(s.owner_fingerprint, s.backend):
                self._idle_since.pop(s.session_id, None)
            else:
                since = self._idle_since.setdefault(s.session_id, now)
                if now - since >= timedelta(seconds=s.idle_timeout_s):
                    due[s.session_id] = f"idle for {s.idle_timeout_s:g} s"
        if not due:
            return []

        def end(current: tuple[Session, ...]) -> tuple[Session, ...]:
            return tuple(replace(s, ended_at=now, end_reason=due[s.session_id])
                         if s.session_id in due and s.is_open else s for s in current)

        await self._change(end)
        for session_id in due:
            self._idle_since.pop(session_id, None)
        return [s for s in self._sessions if s.session_id in due]

    def next_change(self) -> datetime | None:
        """When an open session next reaches its maximum length."""
        return min((s.deadline for s in self._sessions if s.is_open), default=None)

    # --- the document -------------------------------------------------------------------
    @staticmethod
    def _open_of(sessions: tuple[Session, ...], owner: str, backend: str) -> Session | None:
        return next((s for s in sessions if s.is_open and s.owner_fingerprint == owner
                     and s.backend == backend), None)

    async def _change(self, change: Callable[[tuple[Session, ...]], tuple[Session, ...]]) -> None:
        async with self._writing:
            for _ in range(WRITE_ATTEMPTS):
                now = self._clock.now()
                kept = tuple(s for s in self._sessions
                             if s.ended_at is None or s.ended_at + KEEP_ENDED > now)
                changed = change(kept)
                if await self._store.write_document(DOCUMENT, encode(changed), self._version,
                                                    self._fence):
                    self._sessions, self._version = changed, self._version + 1
                    return
                await self.load()  # another write came first (another leader's)
            raise SchedulerError("store_failed")

    def _take(self, document: Document | None) -> None:
        if document is None:
            self._sessions, self._version = (), 0
        else:
            self._sessions, self._version = decode(document.body), document.version


def _within(field: str, value: float, maximum: float, role: Role) -> float:
    if not 0 < value <= maximum:
        raise SchedulerError("session_limit_out_of_range", field=field, minimum="more than 0",
                             maximum=f"{maximum:.15g}", role=role.value,
                               value=f"{value:.15g}")
    return value


def encode(sessions: tuple[Session, ...]) -> bytes:
    return json.dumps([{
        "id": s.session_id, "owner": s.owner_fingerprint, "owner_name": s.owner_name,
        "role": s.role.value, "backend": s.backend, "opened_at": s.opened_at.isoformat(),
        "max_length_s": s.max_length_s, "idle_timeout_s": s.idle_timeout_s,
        "started_at": s.started_at.isoformat() if s.started_at else None,
        "ended_at": s.ended_at.isoformat() if s.ended_at else None,
        "end_reason": s.end_reason} for s in sessions], ensure_ascii=False).encode()


def decode(body: bytes) -> tuple[Session, ...]:
    def moment(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return tuple(Session(
        item["id"], item["owner"], item["owner_name"], Role(item["role"]), item["backend"],
        datetime.fromisoformat(item["opened_at"]), float(item["max_length_s"]),
        float(item["idle_timeout_s"]), moment(item["started_at"]), moment(item["ended_at"]),
        item.get("end_reason", "")) for item in json.loads(body))

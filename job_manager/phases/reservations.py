"""Bookings, sessions and budgets on their users' and admins' word (docs/reservations.md).

Booking a backend and cancelling a booking are an admin's; opening and closing a session
its owner's (an admin may end anyone's). Each change is written to the job store by the
leader, fenced like a job's change, and wakes the waiting nodes to look again: who may be
handed a job may have changed. Listings on a follower read the store, so any replica
answers alike.
"""

from __future__ import annotations

import logging
from datetime import datetime

from common import audit
from common.identity import Principal, Role
from job_manager.bookings import Booking
from job_manager.budgets import BudgetLeft
from job_manager.phases.core import JobCore
from job_manager.sessions import Session
from message_manager import SchedulerError

log = logging.getLogger(__name__)

MAX_BOOKED_USERS = 1000  # names one booking may list
MAX_NAME_CHARS = 256  # characters of one name (the token database's names are shorter)


class Reservations:
    """Books backends and opens sessions; says what a budget leaves."""

    def __init__(self, core: JobCore) -> None:
        self._core = core
        self._turns = core.turns

    # --- bookings ------------------------------------------------------------------------
    async def book(self, principal: Principal, backend: str, starts_at: datetime,
                   ends_at: datetime, users: tuple[str, ...], note: str = "") -> Booking:
        """Book ``backend`` for a window, for ``users`` or (none) for maintenance."""
        _admin_only(principal, "booking a backend")
        self._core.check_known(backend)
        _check_users(users)
        booking = await self._turns.calendar.book(backend, starts_at, ends_at, users,
                                                  principal.name, note)
        self._core.ledger.wake_all()
        log.info("booking %s: %s from %s to %s for %s, by %s", booking.booking_id, backend,
                 starts_at.isoformat(), ends_at.isoformat(), booking.for_whom(),
                 principal.log_name)
        audit.record(audit.Actor.of(principal), "booking.add", booking_id=booking.booking_id,
                     backend=backend)
        return booking

    async def cancel_booking(self, principal: Principal, booking_id: str) -> Booking:
        """Cancel a booking; an open window ends now."""
        _admin_only(principal, "cancelling a booking")
        booking = await self._turns.calendar.cancel(booking_id)
        self._core.ledger.wake_all()
        log.info("booking %s cancelled by %s", booking_id, principal.log_name)
        audit.record(audit.Actor.of(principal), "booking.cancel", booking_id=booking_id,
                     backend=booking.backend)
        return booking

    async def bookings(self) -> tuple[Booking, ...]:
        """Every booking known (a follower reads them from the store first)."""
        if not self._core.leads:
            await self._turns.calendar.load()
        return self._turns.calendar.bookings

    # --- sessions ------------------------------------------------------------------------
    async def open_session(self, principal: Principal, backend: str,
                           max_length_s: float | None, idle_timeout_s: float | None) -> Session:
        """Open a session on ``backend``, which must take the caller's jobs now."""
        self._core.check_open(backend, principal)
        session = await self._turns.sessions.open(principal, backend, max_length_s,
                                                  idle_timeout_s)
        log.info("session %s opened on %s by %s (at most %g s, idle %g s)",
                 session.session_id, backend, principal.log_name, session.max_length_s,
                 session.idle_timeout_s)
        return session

    async def close_session(self, principal: Principal, session_id: str) -> Session:
        """End an open session: its owner's, or any for an admin."""
        session = await self._turns.sessions.close(session_id, principal)
        self._core.ledger.wake_all()
        if session.owner_fingerprint != principal.fingerprint:
            audit.record(audit.Actor.of(principal), "session.end", session_id=session_id,
                         owner_name=session.owner_name, backend=session.backend)
        log.info("session %s on %s ended: %s", session_id, session.backend,
                 session.end_reason)
        return session

    async def sessions(self, principal: Principal, everyone: bool) -> tuple[Session, ...]:
        """The caller's sessions, open or lately ended (an admin's ``everyone``: all)."""
        if everyone:
            _admin_only(principal, "listing everyone's sessions")
        if not self._core.leads:
            await self._turns.sessions.load()
        return tuple(s for s in self._turns.sessions.sessions
                     if everyone or s.owner_fingerprint == principal.fingerprint)

    # --- budgets ---------------------------------------------------------------------------
    async def budget_left(self, principal: Principal) -> BudgetLeft | None:
        """The caller's budget and its use this period, or None when none applies."""
        return await self._turns.budgets.left(principal, self._core.clock.now())


def _admin_only(principal: Principal, what: str) -> None:
    if principal.role is not Role.ADMIN:
        raise SchedulerError("admin_only", what=what)


def _check_users(users: tuple[str, ...]) -> None:
    if len(users) > MAX_BOOKED_USERS:
        raise SchedulerError("booking_users_invalid", maximum=MAX_NAME_CHARS,
                             most=MAX_BOOKED_USERS, detail=f"it names {len(users)}")
    for name in users:
        if not 0 < len(name) <= MAX_NAME_CHARS or name.strip() != name:
            raise SchedulerError("booking_users_invalid", maximum=MAX_NAME_CHARS,
                                 most=MAX_BOOKED_USERS, detail=f"{name[:64]!r} is not a name")

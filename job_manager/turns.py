"""Whose turn it is: what the bookings, the sessions and the budgets allow now.

The queue orders jobs (job_manager/queue.py); this says which of them may go at all and
which go first, as a gate for one backend's hand-over:

- a booking's open window admits its users only (maintenance: no one), and a booking not
  yet open holds back its users' jobs on its backend until it opens;
- a spent budget holds back its owner's jobs until its period resets (an owner with a
  budget whose use this leader has not counted yet waits the moment it takes to count);
- the session holding the backend (docs/reservations.md) goes first.

With no booking, no open session and no budget, there is no gate at all: the hand-over is
the queue's own order, unchanged. ``waiting_because`` says in words why a queued job
waits, for its status detail.
"""

from __future__ import annotations

from datetime import datetime

from common.clock import spoken_time
from common.identity import Principal
from job_manager.bookings import Calendar
from job_manager.budgets import BudgetBook
from job_manager.model import JobRecord
from job_manager.queue import Gate, JobOrigin
from job_manager.sessions import SessionBook


class Turns:
    """The gate of each backend's hand-over, from the bookings, sessions and budgets."""

    def __init__(self, calendar: Calendar, sessions: SessionBook, budgets: BudgetBook) -> None:
        self.calendar = calendar
        self.sessions = sessions
        self.budgets = budgets
        # Owners with a budget whose use this leader has not counted yet, seen by a gate:
        # their jobs wait until the hand-over phase has counted it (take_uncounted).
        self._uncounted: dict[str, Principal] = {}
        self._counting: set[str] = set()

    def gate(self, backend: str, now: datetime) -> Gate | None:
        """Who may be handed ``backend``'s jobs now; None when nothing holds anyone back."""
        holder = self.sessions.holder(backend, now)
        if not (self.calendar.bookings or holder is not None or self.budgets.rules):
            return None

        def admits(origin: JobOrigin) -> bool:
            if self.calendar.hold(origin.backend, origin.owner_name, now) is not None:
                return False
            return self._within_budget(origin, now)

        return Gate(admits, holder.owner_fingerprint if holder is not None else None)

    def waiting_because(self, record: JobRecord, now: datetime) -> str:
        """Why a queued job may not be handed over now, or what goes before it; "" when
        nothing but the queue's order does."""
        hold = self.calendar.hold(record.backend, record.owner_name, now)
        if hold is not None:
            return hold.why
        left = self.budgets.known_left(record.owner_fingerprint, now)
        if left is not None and left.spent:
            return (f"waiting: your budget for this {left.budget.period.value} is spent; "
                    f"it resets at {spoken_time(left.resets_at)}")
        holder = self.sessions.holder(record.backend, now)
        if holder is not None and holder.owner_fingerprint != record.owner_fingerprint:
            return (f"a session of another user holds {record.backend}, at most until "
                    f"{spoken_time(holder.deadline)}")
        if holder is not None:
            return f"in your session {holder.session_id}: goes before the rest of the queue"
        return ""

    def _within_budget(self, origin: JobOrigin, now: datetime) -> bool:
        owner = Principal(origin.owner_name, origin.role, origin.owner_fingerprint)
        if self.budgets.budget_of(owner) is None:
            return True
        left = self.budgets.known_left(origin.owner_fingerprint, now)
        if left is None:
            if owner.fingerprint not in self._counting:
                self._uncounted[owner.fingerprint] = owner  # counted shortly; until then
            return False  # the owner's jobs wait
        return not left.spent

    def take_uncounted(self) -> list[Principal]:
        """The owners a gate found with a budget not counted yet; each given once, until
        :meth:`counted` says its count is done (or failed)."""
        owners = list(self._uncounted.values())
        self._uncounted.clear()
        self._counting.update(owner.fingerprint for owner in owners)
        return owners

    def counted(self, owner: Principal) -> None:
        """The count of ``owner``'s use is done (or failed: a later gate asks again)."""
        self._counting.discard(owner.fingerprint)

    def active(self) -> bool:
        """Whether anything may hold a job back now: a booking, an open session, a budget."""
        return bool(self.calendar.bookings or self.sessions.sessions or self.budgets.rules)

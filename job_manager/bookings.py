"""Reservations and maintenance windows: a backend booked for a window of time.

A booking names a backend, a window [starts_at, ends_at) and who may run in it: one user
or a list of users (by the names the token database gives them), or no one (maintenance).
While a window is open only its users' jobs are handed over from that backend; the others
wait QUEUED, told why and until when. Before it opens, its users' jobs on that backend
wait for it, as a reservation's tasks wait on Amazon Braket. A maintenance window also
shows the backend as ``maintenance`` while it is open, and is announced before it opens
(docs/reservations.md).

The bookings are one small document in the job store (a compare-and-set on its version,
fenced like a job's write), so they survive restarts and failovers; the leader decides,
and a follower reads them from the store to answer. Windows that ended more than
KEEP_ENDED ago are dropped at the next write.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from common.clock import Clock, spoken_time
from job_manager.documents import StoredDocument
from job_manager.stores import Fence, JobStore
from message_manager import SchedulerError

DOCUMENT = "bookings"
KEEP_ENDED = timedelta(days=7)  # ended windows still listed this long


@dataclass(frozen=True)
class Booking:
    """One backend booked for one window."""

    booking_id: str
    backend: str
    starts_at: datetime
    ends_at: datetime
    users: tuple[str, ...]  # who may run in it, by name; () for maintenance
    booked_by: str
    note: str = ""

    @property
    def maintenance(self) -> bool:
        return not self.users

    def is_open(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def overlaps(self, other: Booking) -> bool:
        return (self.backend == other.backend and self.starts_at < other.ends_at
                and other.starts_at < self.ends_at)

    def for_whom(self) -> str:
        """Who the window is for, in words."""
        return "maintenance" if self.maintenance else ", ".join(self.users)


@dataclass(frozen=True)
class Hold:
    """Why a job may not be handed over now, and until when."""

    why: str
    until: datetime


class Calendar:
    """The bookings of every backend, as the job store holds them, and what they allow now."""

    def __init__(self, store: JobStore, clock: Clock, fence: Fence | None = None) -> None:
        self._clock = clock
        self._document = StoredDocument(store, DOCUMENT, encode, decode, fence,
                                        "cancel a booking, or book for fewer users")

    @property
    def bookings(self) -> tuple[Booking, ...]:
        """Every booking known, the earliest window first."""
        return self._document.items

    async def load(self) -> None:
        """Read the bookings from the store (a term's start, or a follower's answer)."""
        await self._document.load()

    async def book(self, backend: str, starts_at: datetime, ends_at: datetime,
                   users: tuple[str, ...], booked_by: str, note: str = "") -> Booking:
        """Book ``backend`` for a window; refused when it is empty, past, or overlaps one
        already booked for that backend (``booking_overlaps``)."""
        now = self._clock.now()
        if ends_at <= starts_at:
            raise SchedulerError("booking_window_empty", starts_at=spoken_time(starts_at),
                                 ends_at=spoken_time(ends_at))
        if ends_at <= now:
            raise SchedulerError("booking_in_the_past", ends_at=spoken_time(ends_at))
        booking = Booking(str(uuid.uuid4()), backend, starts_at, ends_at,
                          tuple(sorted(set(users))), booked_by, note)

        def add(current: tuple[Booking, ...]) -> tuple[Booking, ...]:
            for other in current:
                if other.overlaps(booking):
                    raise SchedulerError(
                        "booking_overlaps", backend=backend, booking_id=other.booking_id,
                        starts_at=spoken_time(other.starts_at), ends_at=spoken_time(other.ends_at),
                        users=other.for_whom())
            return (*current, booking)

        await self._change(add)
        return booking

    async def cancel(self, booking_id: str) -> Booking:
        """Cancel a booking (one whose window is open ends now); ``booking_not_found``."""
        found: list[Booking] = []

        def remove(current: tuple[Booking, ...]) -> tuple[Booking, ...]:
            found[:] = [b for b in current if b.booking_id == booking_id]
            if not found:
                raise SchedulerError("booking_not_found", booking_id=booking_id)
            return tuple(b for b in current if b.booking_id != booking_id)

        await self._change(remove)
        return found[0]

    # --- what the bookings allow now --------------------------------------------------------
    def open_window(self, backend: str, now: datetime) -> Booking | None:
        """The booking whose window is open on ``backend`` now, if any."""
        return next((b for b in self.bookings if b.backend == backend and b.is_open(now)),
                    None)

    def hold(self, backend: str, owner_name: str, now: datetime) -> Hold | None:
        """Why ``owner_name``'s jobs on ``backend`` may not be handed over now, if they may
        not: another's window (or maintenance) is open, or their own has not opened yet."""
        window = self.open_window(backend, now)
        if window is not None:
            if owner_name in window.users:
                return None
            # Who it is reserved for is an admin's to know (ListBookings), not every user's.
            what = "in maintenance" if window.maintenance else "reserved for other users"
            return Hold(f"{backend} is {what} until {spoken_time(window.ends_at)}", window.ends_at)
        for booking in self.bookings:
            if (booking.backend == backend and owner_name in booking.users
                    and now < booking.starts_at):
                return Hold(f"waiting for your reservation of {backend}, "
                            f"from {spoken_time(booking.starts_at)}", booking.starts_at)
        return None

    def next_maintenance(self, backend: str, now: datetime) -> Booking | None:
        """The maintenance window of ``backend`` open now or the next to open."""
        return next((b for b in self.bookings if b.backend == backend and b.maintenance
                     and now < b.ends_at), None)

    # --- the document -----------------------------------------------------------------------
    async def _change(self, change: Callable[[tuple[Booking, ...]], tuple[Booking, ...]]) -> None:
        now = self._clock.now()
        await self._document.change(
            lambda kept: tuple(sorted(change(kept), key=lambda b: (b.starts_at, b.backend))),
            # Compared on now's side: a window to the last date held has no date a week on.
            lambda booking: booking.ends_at > now - KEEP_ENDED)


def encode(bookings: tuple[Booking, ...]) -> bytes:
    """The bookings as the store keeps them (JSON, times in ISO 8601 with their offset)."""
    return json.dumps([{
        "id": b.booking_id, "backend": b.backend, "starts_at": b.starts_at.isoformat(),
        "ends_at": b.ends_at.isoformat(), "users": list(b.users), "booked_by": b.booked_by,
        "note": b.note} for b in bookings], ensure_ascii=False).encode()


def decode(body: bytes) -> tuple[Booking, ...]:
    """The bookings a stored document holds."""
    return tuple(Booking(item["id"], item["backend"], datetime.fromisoformat(item["starts_at"]),
                         datetime.fromisoformat(item["ends_at"]), tuple(item["users"]),
                         item["booked_by"], item.get("note", ""))
                 for item in json.loads(body))


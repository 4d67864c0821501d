"""ReservationsService: sessions and bookings (mqc3_scheduler.extension.v1), on the
submission port beside SubmissionService (docs/reservations.md).

Opening, closing, booking and cancelling change what the leader decides, so they run
where the leader is (a follower passes them on); listings read the store, so any replica
answers them. Booking and cancelling are an admin's; anyone may list the bookings, and
only an admin is told whose others' reservations are.
"""

from __future__ import annotations

from datetime import datetime

import grpc
from google.protobuf.duration_pb2 import Duration

from common import timestamps
from common.clock import Clock
from common.identity import Principal, Role
from job_manager.bookings import Booking
from job_manager.manager import JobManager
from job_manager.sessions import Session
from message_manager import SchedulerError
from pb.mqc3_scheduler.extension.v1 import reservations_pb2 as pb
from pb.mqc3_scheduler.extension.v1 import reservations_pb2_grpc
from scheduler.access.auth import TokenResolver
from scheduler.messages import convert
from scheduler.messages.validation import well_formed
from scheduler.services.edge import Edge, in_band

RESERVATIONS = pb.DESCRIPTOR.services_by_name["ReservationsService"].full_name
MAX_ID_CHARS = 64  # a session's or a booking's id (a UUID: 36)
MAX_NOTE_CHARS = 1024
MAX_DURATION_S = 315_576_000_000  # the largest Duration protobuf defines (10,000 years)


class ReservationsService(reservations_pb2_grpc.ReservationsServiceServicer):
    """Open and close sessions; book backends and cancel bookings."""

    def __init__(self, auth: TokenResolver, edge: Edge, clock: Clock) -> None:
        self._auth = auth
        self.edge = edge
        self._clock = clock

    @in_band(pb.OpenSessionResponse, leader=True)
    async def OpenSession(self, request: pb.OpenSessionRequest,
                          context: grpc.aio.ServicerContext,
                          manager: JobManager) -> pb.OpenSessionResponse:
        principal = await self._auth.resolve(request.token)
        session = await manager.open_session(
            principal, request.backend,
            _seconds(request.max_length, "max_length_s")
            if request.HasField("max_length") else None,
            _seconds(request.idle_timeout, "idle_timeout_s")
            if request.HasField("idle_timeout") else None)
        return pb.OpenSessionResponse(session=_session(session, principal))

    @in_band(pb.CloseSessionResponse, leader=True)
    async def CloseSession(self, request: pb.CloseSessionRequest,
                           context: grpc.aio.ServicerContext,
                           manager: JobManager) -> pb.CloseSessionResponse:
        principal = await self._auth.resolve(request.token)
        session_id = request.session_id
        if not 0 < len(session_id) <= MAX_ID_CHARS:
            raise SchedulerError("session_not_found", session_id=session_id[:MAX_ID_CHARS])
        session = await manager.close_session(principal, session_id)
        return pb.CloseSessionResponse(session=_session(session, principal))

    @in_band(pb.ListSessionsResponse)
    async def ListSessions(self, request: pb.ListSessionsRequest,
                           context: grpc.aio.ServicerContext,
                           manager: JobManager) -> pb.ListSessionsResponse:
        principal = await self._auth.resolve(request.token)
        sessions = await manager.sessions(principal, request.all_users)
        return pb.ListSessionsResponse(sessions=[_session(s, principal) for s in sessions])

    @in_band(pb.BookBackendResponse, leader=True)
    async def BookBackend(self, request: pb.BookBackendRequest,
                          context: grpc.aio.ServicerContext,
                          manager: JobManager) -> pb.BookBackendResponse:
        principal = await self._auth.resolve(request.token)
        users = tuple(request.users)
        if request.maintenance == bool(users):
            raise SchedulerError(
                "booking_users_invalid", maximum=256, most=1000,
                detail="name its users, or book it for maintenance (no users), not both"
                if users else "name at least one user, or book it for maintenance")
        if len(request.note) > MAX_NOTE_CHARS:
            raise SchedulerError("report_field_too_long", field="note", maximum=MAX_NOTE_CHARS,
                                 length=len(request.note))
        starts_at = (_time(request, "starts_at") if request.HasField("starts_at")
                     else self._clock.now())
        if not request.HasField("ends_at"):
            raise SchedulerError("booking_window_empty", starts_at=starts_at.isoformat(),
                                 ends_at="unset")
        booking = await manager.book(principal, request.backend, starts_at,
                                     _time(request, "ends_at"), users, request.note)
        return pb.BookBackendResponse(booking=_booking(booking, principal))

    @in_band(pb.CancelBookingResponse, leader=True)
    async def CancelBooking(self, request: pb.CancelBookingRequest,
                            context: grpc.aio.ServicerContext,
                            manager: JobManager) -> pb.CancelBookingResponse:
        principal = await self._auth.resolve(request.token)
        booking_id = request.booking_id
        if not 0 < len(booking_id) <= MAX_ID_CHARS:
            raise SchedulerError("booking_not_found", booking_id=booking_id[:MAX_ID_CHARS])
        booking = await manager.cancel_booking(principal, booking_id)
        return pb.CancelBookingResponse(booking=_booking(booking, principal))

    @in_band(pb.ListBookingsResponse)
    async def ListBookings(self, request: pb.ListBookingsRequest,
                           context: grpc.aio.ServicerContext,
                           manager: JobManager) -> pb.ListBookingsResponse:
        principal = await self._auth.resolve(request.token)
        now = self._clock.now()
        bookings = [b for b in await manager.bookings()
                    if (not request.backend or b.backend == request.backend)
                    and (request.include_ended or b.ends_at > now)]
        return pb.ListBookingsResponse(bookings=[_booking(b, principal) for b in bookings])


def _seconds(duration: Duration, field: str) -> float:
    """A session limit as sent, in seconds; a malformed one is refused naming it."""
    if not well_formed(duration) or abs(duration.seconds) > MAX_DURATION_S:
        raise SchedulerError("duration_malformed", field=field.removesuffix("_s"))
    return float(duration.seconds + duration.nanos / 1e9)


def _time(request: pb.BookBackendRequest, field: str) -> datetime:
    try:
        return timestamps.clamped(getattr(request, field))
    except timestamps.TimestampMalformed:
        raise SchedulerError("timestamp_invalid", field=field) from None



def _session(session: Session, viewer: Principal) -> pb.Session:
    message = pb.Session(
        session_id=session.session_id, backend=session.backend,
        owner_name=(session.owner_name if viewer.role is Role.ADMIN
                    and session.owner_fingerprint != viewer.fingerprint else ""),
        max_length=convert.duration(session.max_length_s),
        idle_timeout=convert.duration(session.idle_timeout_s), open=session.is_open,
        end_reason=session.end_reason)
    message.opened_at.CopyFrom(convert.timestamp(session.opened_at))
    message.ends_by.CopyFrom(convert.timestamp(session.deadline))
    if session.started_at is not None:
        message.started_at.CopyFrom(convert.timestamp(session.started_at))
    if session.ended_at is not None:
        message.ended_at.CopyFrom(convert.timestamp(session.ended_at))
    return message


def _booking(booking: Booking, viewer: Principal) -> pb.Booking:
    admin = viewer.role is Role.ADMIN
    message = pb.Booking(
        booking_id=booking.booking_id, backend=booking.backend,
        users=list(booking.users) if admin else [],
        maintenance=booking.maintenance, for_you=viewer.name in booking.users,
        note=booking.note, booked_by=booking.booked_by if admin else "")
    message.starts_at.CopyFrom(convert.timestamp(booking.starts_at))
    message.ends_at.CopyFrom(convert.timestamp(booking.ends_at))
    return message

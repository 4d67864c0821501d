"""``scheduler.py sessions`` and ``scheduler.py bookings``: sessions and reservations for
people, over gRPC to a running scheduler's ReservationsService (docs/reservations.md).

Same address, token, output and exit codes as ``scheduler.py jobs``
(scheduler/wiring/jobs_cli.py). Times are given as ISO 8601 (without an offset: UTC),
``now``, or ``+`` and a duration from now (``+90m``, ``+2h``, ``+1d``); they are printed
in UTC.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from common.clock import SystemClock
from pb.mqc3_scheduler.extension.v1 import reservations_pb2 as pb
from pb.mqc3_scheduler.extension.v1 import reservations_pb2_grpc
from scheduler.messages import convert
from scheduler.wiring.jobs_cli import checked, client_parser, print_rows, run_client, time_text

_FROM_NOW = re.compile(r"\+(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 315_576_000_000  # the most a protobuf Duration holds (10,000 years)


# --- sessions -------------------------------------------------------------------------------
def _sessions_parser() -> argparse.ArgumentParser:
    parser = client_parser("scheduler.py sessions", "Open, close and list your sessions")
    commands = parser.add_subparsers(dest="command", required=True)
    opening = commands.add_parser(
        "open", help="open a session on a backend: your jobs there go first once one has run")
    opening.add_argument("backend")
    opening.add_argument("--max-length", type=_positive_seconds, default=None, metavar="S",
                         help="seconds from now it ends at the latest (default: your role's)")
    opening.add_argument("--idle-timeout", type=_positive_seconds, default=None, metavar="S",
                         help="seconds with no job queued or running that end it "
                              "(default: your role's)")
    commands.add_parser("close", help="end one of your open sessions").add_argument(
        "session_id")
    listing = commands.add_parser("list", help="your sessions, open or ended in the last day")
    listing.add_argument("--all", action="store_true", help="admins: everyone's")
    return parser


def sessions_main(argv: Sequence[str]) -> int:
    """Entry point of ``scheduler.py sessions``; returns the exit code."""
    return run_client("sessions", _sessions_parser().parse_args(list(argv)), _run_sessions)


async def _run_sessions(args: argparse.Namespace, channel: grpc.aio.Channel,
                        token: str) -> None:
    stub = reservations_pb2_grpc.ReservationsServiceStub(channel)
    columns = ["session_id", "backend", "state", "opened_at", "ends_by", "idle_timeout_s"]
    if args.command == "open":
        request = pb.OpenSessionRequest(token=token, backend=args.backend)
        if args.max_length is not None:
            request.max_length.CopyFrom(convert.duration(args.max_length))
        if args.idle_timeout is not None:
            request.idle_timeout.CopyFrom(convert.duration(args.idle_timeout))
        opened = checked(await stub.OpenSession(request))
        print_rows(args, [_session_row(opened.session)], [*columns, "max_length_s"])
    elif args.command == "close":
        closed = checked(await stub.CloseSession(
            pb.CloseSessionRequest(token=token, session_id=args.session_id)))
        print_rows(args, [_session_row(closed.session)],
                   ["session_id", "backend", "state", "ended_at", "end_reason"])
    else:
        listed = checked(await stub.ListSessions(
            pb.ListSessionsRequest(token=token, all_users=args.all)))
        rows = [_session_row(s) for s in listed.sessions]
        # An admin's --all names each session's owner (blank: the admin's own).
        print_rows(args, rows, [*columns, "end_reason", *(["owner"] if args.all else [])])


def _session_row(session: pb.Session) -> dict[str, Any]:
    """A session as printed: ``open`` until its first job is handed over, then ``begun``
    (its queued jobs go first), then ``ended``."""
    state = ("ended" if not session.open
             else "begun" if session.HasField("started_at") else "open")
    return {
        "session_id": session.session_id, "backend": session.backend, "state": state,
        "owner": session.owner_name, "opened_at": time_text(session.opened_at),
        "started_at": _optional_time(session, "started_at"),
        "ends_by": time_text(session.ends_by),
        "max_length_s": _seconds(session.max_length),
        "idle_timeout_s": _seconds(session.idle_timeout),
        "ended_at": _optional_time(session, "ended_at"), "end_reason": session.end_reason,
    }


# --- bookings -------------------------------------------------------------------------------
def _bookings_parser() -> argparse.ArgumentParser:
    parser = client_parser("scheduler.py bookings",
                           "Book backends for windows of time, list and cancel bookings")
    commands = parser.add_subparsers(dest="command", required=True)
    adding = commands.add_parser(
        "add", help="admins: book a backend for some users, or for maintenance")
    adding.add_argument("backend")
    adding.add_argument("--from", dest="starts", default="now", metavar="TIME",
                        help="when the window opens (default now)")
    adding.add_argument("--to", dest="ends", required=True, metavar="TIME",
                        help="when it closes (not included)")
    whom = adding.add_mutually_exclusive_group(required=True)
    whom.add_argument("--user", dest="users", action="extend", nargs="+", metavar="NAME",
                      help="who may run in it, by the token database's names (repeatable)")
    whom.add_argument("--maintenance", action="store_true",
                      help="no one: the backend shows `maintenance` during the window")
    adding.add_argument("--note", default="", help="shown with the booking")
    listing = commands.add_parser("list", help="the bookings, the earliest window first")
    listing.add_argument("--backend", default="", help="one backend's only")
    listing.add_argument("--ended", action="store_true",
                         help="also windows that ended in the last week")
    commands.add_parser("cancel", help="admins: cancel a booking (an open window ends now)"
                        ).add_argument("booking_id")
    return parser


def bookings_main(argv: Sequence[str]) -> int:
    """Entry point of ``scheduler.py bookings``; returns the exit code."""
    parser = _bookings_parser()
    args = parser.parse_args(list(argv))
    window = None
    if args.command == "add":
        now = SystemClock().now()
        try:
            window = parse_time(args.starts, now), parse_time(args.ends, now)
        except ValueError as exc:
            parser.error(str(exc))
    return run_client("bookings", args, functools.partial(_run_bookings, window=window))


async def _run_bookings(args: argparse.Namespace, channel: grpc.aio.Channel, token: str,
                        window: tuple[datetime, datetime] | None) -> None:
    """``window``: (from, to) of ``add``, parsed before any call is made."""
    stub = reservations_pb2_grpc.ReservationsServiceStub(channel)
    now = SystemClock().now()
    columns = ["booking_id", "backend", "state", "starts_at", "ends_at", "for", "note"]
    if window is not None:
        request = pb.BookBackendRequest(token=token, backend=args.backend,
                                        users=args.users or [],
                                        maintenance=args.maintenance, note=args.note)
        request.starts_at.CopyFrom(convert.timestamp(window[0]))
        request.ends_at.CopyFrom(convert.timestamp(window[1]))
        booked = checked(await stub.BookBackend(request))
        print_rows(args, [_booking_row(booked.booking, now)], columns)
    elif args.command == "cancel":
        cancelled = checked(await stub.CancelBooking(
            pb.CancelBookingRequest(token=token, booking_id=args.booking_id)))
        row = _booking_row(cancelled.booking, now) | {"state": "cancelled"}
        print_rows(args, [row], columns)
    else:
        listed = checked(await stub.ListBookings(pb.ListBookingsRequest(
            token=token, backend=args.backend, include_ended=args.ended)))
        rows = [_booking_row(b, now) for b in listed.bookings]
        # Only an admin is told who booked: then the column is shown.
        print_rows(args, rows, [*columns, *(["booked_by"] if any(r["booked_by"] for r in rows)
                                           else [])])


def _booking_row(booking: pb.Booking, now: datetime) -> dict[str, Any]:
    """A booking as printed; ``for`` is its users (an admin's view), else ``you`` or
    ``others``, or ``maintenance``."""
    starts_at = booking.starts_at.ToDatetime(tzinfo=UTC)
    ends_at = booking.ends_at.ToDatetime(tzinfo=UTC)
    state = "ended" if ends_at <= now else "open" if starts_at <= now else "upcoming"
    whom = ("maintenance" if booking.maintenance else ",".join(booking.users)
            or ("you" if booking.for_you else "others"))
    return {"booking_id": booking.booking_id, "backend": booking.backend, "state": state,
            "starts_at": time_text(booking.starts_at), "ends_at": time_text(booking.ends_at),
            "for": whom, "for_you": booking.for_you, "note": booking.note,
            "booked_by": booking.booked_by}


# --- values ---------------------------------------------------------------------------------
def parse_time(text: str, now: datetime) -> datetime:
    """``now``, ``+<n><s|m|h|d>`` from ``now``, or ISO 8601 (no offset: UTC)."""
    if text == "now":
        return now
    relative = _FROM_NOW.fullmatch(text)
    try:
        if relative is not None:
            return now + timedelta(seconds=float(relative[1]) * _UNIT_S[relative[2]])
        moment = datetime.fromisoformat(text)
    except OverflowError:
        raise ValueError(f"{text!r} lies beyond the year 9999") from None
    except ValueError:
        raise ValueError(f"{text!r} is not a time: give ISO 8601 (2027-01-05T09:00, UTC "
                         f"unless it has an offset), 'now', or '+' and a duration such as "
                         f"+90m, +2h, +1d") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_DURATION_S):
        raise argparse.ArgumentTypeError(f"a number of seconds above 0 (at most "
                                         f"{MAX_DURATION_S})")
    return seconds




def _seconds(duration: Duration) -> float:
    seconds: float = duration.ToTimedelta().total_seconds()
    return round(seconds, 3)


def _optional_time(message: Any, field: str) -> str:
    return time_text(getattr(message, field)) if message.HasField(field) else ""

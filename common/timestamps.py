"""Protobuf Timestamps as datetimes, for every value the wire allows (docs/job-rules.md,
rule 18).

A Timestamp's seconds may be any int64, but a datetime holds only the years 1 to 9999, and
``Timestamp.ToDatetime`` raises beyond them. A time beyond them is still a well-formed
answer to "when": callers say what it means to them (a bound that is no bound, a token
that never expires). Nanos outside 0..999,999,999 make a Timestamp malformed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)
MAX_NANOS = 999_999_999
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_EARLIEST_S = (EARLIEST - _EPOCH) // _SECOND  # -62135596800
_LATEST_S = (LATEST - _EPOCH) // _SECOND  # 253402300799


class TimestampMalformed(ValueError):
    """A Timestamp whose nanos lie outside 0..999,999,999."""


def to_datetime(stamp: Timestamp) -> datetime | None:
    """The aware UTC time ``stamp`` names (to the microsecond, as ToDatetime gives it), or
    None when it lies before the year 1 or after the year 9999."""
    if not 0 <= stamp.nanos <= MAX_NANOS:
        raise TimestampMalformed(f"nanos must be from 0 to {MAX_NANOS}, got {stamp.nanos}")
    if not _EARLIEST_S <= stamp.seconds <= _LATEST_S:
        return None
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def clamped(stamp: Timestamp) -> datetime:
    """The time ``stamp`` names, a time beyond the dates held as the first or last one."""
    moment = to_datetime(stamp)
    if moment is not None:
        return moment
    return EARLIEST if stamp.seconds < 0 else LATEST

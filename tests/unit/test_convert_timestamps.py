"""Timestamps in answers are set without protobuf's calendar arithmetic (a status poll
sets up to eight): they must equal what ``Timestamp.FromDatetime`` gives, for aware
datetimes in any zone and for naive ones (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from scheduler.messages.convert import timestamp

_ZONES = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
       st.one_of(st.none(), st.just(UTC), _ZONES))
def test_a_timestamp_is_what_from_datetime_gives(value: datetime,
                                                zone: timezone | None) -> None:
    value = value.replace(tzinfo=zone)
    expected = Timestamp()
    expected.FromDatetime(value)
    assert timestamp(value) == expected

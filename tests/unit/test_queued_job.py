"""A queued job in memory is compact (docs/design.md, "A queued job in memory"): what it
keeps rebuilds its record exactly, what jobs sent alike share is held once, and its sort
keys order as the pairs they stand for."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.identity import Role
from job_manager.model import JobRecord, JobStatus, new_job_id
from job_manager.queue import QueuedJob, _key_of_rank, _key_of_time
from job_manager.stores import codec

T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def plain(**fields: Any) -> JobRecord:
    """A record as a fresh submission makes it; ``fields`` override."""
    record = JobRecord(
        job_id=new_job_id(), status=JobStatus.QUEUED, backend="emulator", owner_name="alice",
        owner_fingerprint="a" * 64, role=Role.DEVELOPER, settings=b"\x08\x64\x10\x01",
        timeout_s=60.5, input_size_bytes=3, sdk_version="1.2.3", save_job=True,
        submitted_at=T0, queued_at=T0)
    return replace(record, **fields)


def test_a_plain_job_keeps_no_record_and_rebuilds_the_one_it_was_given() -> None:
    record = plain()
    for job in (QueuedJob(record, b"abc"), QueuedJob(record, None)):
        assert job._whole is None
        assert job.record == record and job.size_bytes == 3


@pytest.mark.parametrize("more", [
    {"tags": (("k", "v"),)},
    {"idempotency_key": "retry-1"},
    {"requeues": 1, "status_detail": "queued again: its node never reported (1 of 2)"},
    {"submitted_at": T0 - timedelta(seconds=1)},
    {"input_size_bytes": 4},  # not its program's size
    {"queued_at": T0.astimezone(timezone(timedelta(hours=9))),
     "submitted_at": T0.astimezone(timezone(timedelta(hours=9)))},
])
def test_a_job_with_more_than_a_plain_submission_keeps_its_record_whole(
        more: dict[str, Any]) -> None:
    record = plain(**more)
    job = QueuedJob(record, b"abc")
    assert job.record == record
    if "queued_at" not in more:  # the same instant in another offset is rebuilt equal
        assert job._whole is record


def test_jobs_sent_alike_share_their_origin_settings_and_timeout() -> None:
    first = QueuedJob(plain(settings=b"\x08\x64"), None)
    alike = QueuedJob(plain(settings=bytes(bytearray(b"\x08\x64")), timeout_s=float("60.5"),
                            owner_name="".join(["ali", "ce"])), None)
    other = QueuedJob(plain(owner_name="bob", settings=b"\x08\x65", timeout_s=61.0), None)
    assert alike.origin is first.origin and alike.settings is first.settings
    assert alike.timeout_s is first.timeout_s
    assert other.origin is not first.origin and other.settings != first.settings


def test_a_job_queued_again_goes_at_the_head_with_its_old_queued_at() -> None:
    record = plain(requeues=1, queued_at=T0 - timedelta(hours=1))
    job = QueuedJob.at_head(record)
    assert job.rank_key == 0 and job.sequence == 0
    assert job.queued_at_s == record.queued_at.timestamp() and job.record == record


finite = st.floats(allow_nan=False, allow_infinity=False)
sequences = st.integers(min_value=0, max_value=(1 << 39) - 1)


@given(finite, sequences, finite, sequences)
def test_a_rank_key_orders_as_its_rank_and_sequence(a: float, i: int, b: float, j: int) -> None:
    assert (_key_of_rank(a, i) < _key_of_rank(b, j)) == ((a, i) < (b, j))
    assert (_key_of_rank(a, i) == _key_of_rank(b, j)) == ((a, i) == (b, j))


@given(st.integers(min_value=-(1 << 52), max_value=1 << 52), sequences,
       st.integers(min_value=-(1 << 52), max_value=1 << 52), sequences)
def test_an_age_key_orders_as_its_time_and_sequence(a: int, i: int, b: int, j: int) -> None:
    assert (_key_of_time(a, i) < _key_of_time(b, j)) == ((a, i) < (b, j))


# --- a recovery's lean read (codec.decode_lean) ------------------------------------------
def _row(record: JobRecord) -> dict[str, Any]:
    """The row a store holds for ``record``, as it reads it back (through JSON)."""
    loaded: dict[str, Any] = json.loads(json.dumps(codec.encode(record)))
    return loaded


def test_a_plain_row_read_lean_gives_the_record_a_whole_decode_gives() -> None:
    for record in (plain(), plain(sdk_version="", save_job=False, settings=b"")):
        lean = codec.decode_lean(_row(record))
        assert lean is not None
        assert QueuedJob.recovered(lean).record == codec.decode(_row(record)) == record


@pytest.mark.parametrize("more", [
    {"tags": (("k", "v"),)}, {"idempotency_key": "retry-1"}, {"requeues": 2},
    {"status_detail": "queued again"}, {"submitted_at": T0 - timedelta(seconds=1)},
    {"result_raw_size_bytes": 5}, {"node_identity": "node-1"},
])
def test_a_row_with_more_than_a_plain_submission_is_left_to_the_whole_decode(
        more: dict[str, Any]) -> None:
    assert codec.decode_lean(_row(plain(**more))) is None


def test_a_row_the_whole_decode_refuses_is_refused_lean_too() -> None:
    row = _row(plain())
    row["timeout_ms"] = "sixty"
    with pytest.raises(ValueError):
        codec.decode_lean(row)
    with pytest.raises(ValueError):
        codec.decode(row)

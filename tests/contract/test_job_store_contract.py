"""The JobStore contract: every test runs against the SQLite file and against DynamoDB (moto)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from common.identity import Role
from job_manager.model import BackendTimestamps, JobRecord, JobStatus, QueuedRow
from job_manager.queue import QueuedJob
from job_manager.stores import JobStore, KeyTaken, StoreError
from job_manager.stores.dynamodb_job_store import DynamoDbJobStore, create_table
from job_manager.stores.sqlite_job_store import SqliteJobStore
from tests.contract.conftest import endpoint_of
from tests.helpers import aws_client

# Ten records take several pages in either store: SQLite pages of PAGE_SIZE records (one
# of them exactly full), DynamoDB query pages of 1 MB of records with BULKY_SETTINGS.
PAGE_SIZE = 3
BULKY_SETTINGS = bytes(range(256)) * 1000
T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
JST = timezone(timedelta(hours=9))


def record(**fields: Any) -> JobRecord:
    """A QUEUED record with only the required fields set; ``fields`` override."""
    base = JobRecord(
        job_id=str(uuid.uuid4()),
        status=JobStatus.QUEUED,
        backend="emulator",
        owner_name="alice",
        owner_fingerprint="f" * 64,
        role=Role.DEVELOPER,
        settings=b"",
        timeout_s=60.0,
        input_size_bytes=0,
        submitted_at=T0,
        queued_at=T0,
    )
    return replace(base, **fields)


def full_record() -> JobRecord:
    """A final record with every field set, to the microsecond, in more than one UTC offset."""
    return record(
        status=JobStatus.COMPLETED,
        backend="qpu",
        owner_name="bob",
        owner_fingerprint="0123abcd" * 8,
        role=Role.ADMIN,
        settings=b"\x08\x01\x00\xff\xfe\x80 not utf-8 \xc3\x28",
        timeout_s=90.5,
        input_size_bytes=123_456,
        submitted_at=T0,
        queued_at=T0 + timedelta(microseconds=1),
        sdk_version="1.2.3",
        save_job=True,
        idempotency_key="retry-7",
        request_digest="d" * 64,
        status_detail="all good ✓",
        dequeued_at=(T0 + timedelta(seconds=1, microseconds=2)).astimezone(JST),
        finished_at=T0 + timedelta(seconds=9, microseconds=999_999),
        backend_timestamps=BackendTimestamps(
            compile_started_at=T0 + timedelta(seconds=2, microseconds=3),
            compile_finished_at=T0 + timedelta(seconds=3, microseconds=4),
            execution_started_at=T0 + timedelta(seconds=4, microseconds=5),
            execution_finished_at=T0 + timedelta(seconds=5, microseconds=6),
        ),
        actual_backend="qpu-2",
        physical_lab_version="lab-2.1",
        simulator_version="sim-0.9",
        result_raw_size_bytes=4096,
        result_encoded_size_bytes=1024,
        node_identity="lab node 1",
        cancelled_by="c" * 64,
        tags=(("experiment", "bell pair #3"), ("team", "optics")),
        requeues=2,
    )


def test_the_full_record_sets_every_field_away_from_its_default() -> None:
    # So a field added to JobRecord but forgotten by a store's codec fails the round trips.
    blank = record()
    full = full_record()
    unset = [f.name for f in fields(JobRecord)
             # format_version: what a store read, not what it writes (test_record_formats.py)
             if f.name not in ("job_id", "submitted_at", "format_version")
             and getattr(full, f.name) == getattr(blank, f.name)]
    assert unset == []


def running(queued: JobRecord, node: str = "qpu-1") -> JobRecord:
    return replace(
        queued, status=JobStatus.RUNNING, dequeued_at=T0 + timedelta(seconds=1), actual_backend=node
    )


def finished(run: JobRecord, status: JobStatus = JobStatus.COMPLETED) -> JobRecord:
    return replace(
        run,
        status=status,
        finished_at=T0 + timedelta(seconds=5),
        status_detail=f"{status.value.lower()} by test",
    )


async def collect(store: JobStore, status: JobStatus) -> list[JobRecord]:
    return sorted([r async for r in store.list_by_status(status)], key=lambda r: r.job_id)


def by_id(records: list[JobRecord]) -> list[JobRecord]:
    return sorted(records, key=lambda r: r.job_id)


# --- the backends --------------------------------------------------------------------------
Opener = Callable[[], JobStore]


def _dynamodb_table(moto_endpoint: str) -> str:
    name = f"jobs-{uuid.uuid4().hex[:12]}"
    create_table(aws_client("dynamodb", moto_endpoint), name)
    return name


@pytest.fixture(params=["sqlite", "dynamodb", "dynamodb-plain-moto"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens a store over one backend's data; a second call is the same data after a restart."""
    if request.param == "sqlite":
        path = tmp_path / "jobs.sqlite3"

        def opener() -> JobStore:
            return SqliteJobStore(path, page_size=PAGE_SIZE, queued_page_size=PAGE_SIZE)
    else:
        endpoint = endpoint_of(request)
        table = _dynamodb_table(endpoint)

        def opener() -> JobStore:
            return DynamoDbJobStore(aws_client("dynamodb", endpoint), table)

    return opener


@pytest.fixture
async def store(open_store: Opener) -> AsyncIterator[JobStore]:
    job_store = open_store()
    yield job_store
    await job_store.close()


# --- create and get ------------------------------------------------------------------------
async def test_get_returns_a_record_equal_to_the_created_one_in_every_field(
    store: JobStore,
) -> None:
    full = full_record()
    await store.create(full)
    # Equality covers every field: a naive or truncated datetime is not equal.
    assert await store.get(full.job_id) == full


@pytest.mark.parametrize("stamp", [f.name for f in fields(BackendTimestamps)])
async def test_each_backend_timestamp_alone_survives_the_round_trip(
        store: JobStore, stamp: str) -> None:
    # A record with one node timestamp is not mistaken for one no node reported on.
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    alone = record(backend_timestamps=BackendTimestamps(**{stamp: when}))
    await store.create(alone)
    got = await store.get(alone.job_id)
    assert got is not None and getattr(got.backend_timestamps, stamp) == when


async def test_get_returns_empty_optional_fields_as_empty(store: JobStore) -> None:
    minimal = record()
    await store.create(minimal)
    got = await store.get(minimal.job_id)
    assert got == minimal
    assert got is not None
    assert (got.dequeued_at, got.finished_at) == (None, None)
    assert got.backend_timestamps == BackendTimestamps()
    assert (got.settings, got.idempotency_key, got.status_detail) == (b"", "", "")


async def test_get_of_a_missing_id_is_none(store: JobStore) -> None:
    await store.create(record())
    assert await store.get(str(uuid.uuid4())) is None


async def test_create_of_an_existing_id_raises_and_keeps_the_first_record(
    store: JobStore,
) -> None:
    first = record(owner_name="first")
    await store.create(first)
    with pytest.raises(StoreError):
        await store.create(replace(first, owner_name="second", status=JobStatus.RUNNING))
    assert await store.get(first.job_id) == first


# --- transition ----------------------------------------------------------------------------
async def test_transition_from_queued_to_running_succeeds_once(store: JobStore) -> None:
    queued = record()
    await store.create(queued)
    first = running(queued, node="qpu-1")
    assert await store.transition(queued, first) is True
    assert await store.get(queued.job_id) == first

    assert await store.transition(queued, running(queued, node="qpu-2")) is False
    assert await store.get(queued.job_id) == first


async def test_transition_from_running_to_a_final_status_stores_the_new_record(
    store: JobStore,
) -> None:
    queued = record()
    await store.create(queued)
    await store.transition(queued, running(queued))
    done = finished(running(queued))
    assert await store.transition(running(queued), done) is True
    assert await store.get(queued.job_id) == done


@pytest.mark.parametrize("expected", [JobStatus.QUEUED, JobStatus.RUNNING])
async def test_a_completed_record_never_changes(store: JobStore, expected: JobStatus) -> None:
    queued = record()
    await store.create(queued)
    await store.transition(queued, running(queued))
    done = finished(running(queued))
    await store.transition(running(queued), done)
    for status in JobStatus:
        attempt = replace(done, status=status, status_detail="overwritten")
        assert await store.transition(replace(done, status=expected), attempt) is False, status
    assert await store.get(queued.job_id) == done


async def test_transition_of_a_missing_job_is_false_and_creates_nothing(
    store: JobStore,
) -> None:
    ghost = record()
    assert await store.transition(ghost, running(ghost)) is False
    assert await store.transition(running(ghost), finished(running(ghost))) is False
    assert await store.get(ghost.job_id) is None
    assert await collect(store, JobStatus.RUNNING) == []


async def test_transition_changes_only_the_job_it_names(store: JobStore) -> None:
    first, second = record(), record()
    await store.create(first)
    await store.create(second)
    assert await store.transition(first, running(first))
    assert await store.get(second.job_id) == second


# --- list_by_status ------------------------------------------------------------------------
async def test_list_by_status_returns_exactly_the_records_in_that_status_across_pages(
    store: JobStore,
) -> None:
    queued = [
        record(settings=BULKY_SETTINGS, queued_at=T0 + timedelta(seconds=i)) for i in range(10)
    ]
    for r in queued:
        await store.create(r)
    moved = [record(settings=BULKY_SETTINGS) for _ in range(PAGE_SIZE)]
    for r in moved:
        await store.create(r)
        await store.transition(r, running(r))

    assert await collect(store, JobStatus.QUEUED) == by_id(queued)
    assert await collect(store, JobStatus.RUNNING) == by_id([running(r) for r in moved])
    assert await collect(store, JobStatus.COMPLETED) == []


async def test_list_by_status_of_an_empty_store_is_empty(store: JobStore) -> None:
    assert await collect(store, JobStatus.QUEUED) == []


# --- list_queued (a recovery's read, docs/design.md "A queued job in memory") --------------
async def test_list_queued_gives_every_queued_record_and_a_plain_one_lean(
    store: JobStore,
) -> None:
    plain = [record(queued_at=T0 + timedelta(seconds=i), submitted_at=T0 + timedelta(seconds=i),
                    settings=bytes([i]), input_size_bytes=i) for i in range(7)]
    more = [record(tags=(("k", "v"),)), record(idempotency_key="key"), record(requeues=1),
            record(queued_at=T0 + timedelta(seconds=1))]
    for r in plain + more:
        await store.create(r)
    moved = record()
    await store.create(moved)
    await store.transition(moved, running(moved))

    found = [item async for item in store.list_queued()]
    assert by_id([QueuedJob.recovered(item).record for item in found]) == by_id(plain + more)
    lean = {item.job_id for item in found if isinstance(item, QueuedRow)}
    assert lean == {r.job_id for r in plain}


# --- the extremes the wire allows (docs/job-rules.md, rule 18) ------------------------------
# The largest declared timeout (int64 seconds and 999,999,999 ns, as JobRecord holds it),
# one past the dates a deadline can hold, and the largest sizes a node may report.
LARGEST_TIMEOUT_S = (2**63 - 1) + 0.999_999_999
BEYOND_DATES_TIMEOUT_S = 3e11
UINT64_MAX = 2**64 - 1


@pytest.mark.parametrize("timeout_s", [LARGEST_TIMEOUT_S, BEYOND_DATES_TIMEOUT_S, 0.001])
async def test_the_extremes_of_the_wire_survive_every_read_and_a_reopening(
        open_store: Opener, timeout_s: float) -> None:
    before = open_store()
    queued = record(timeout_s=timeout_s)
    moved = record(timeout_s=timeout_s)
    done = replace(finished(running(moved)), result_raw_size_bytes=UINT64_MAX,
                   result_encoded_size_bytes=UINT64_MAX)
    await before.create(queued)
    await before.create(moved)
    assert await before.transition(moved, running(moved))
    assert await before.transition(running(moved), done)
    await before.close()

    after = open_store()
    try:
        assert await after.get(queued.job_id) == queued
        assert await after.get(moved.job_id) == done
        recovered = [QueuedJob.recovered(item).record async for item in after.list_queued()]
        assert recovered == [queued]
        assert await collect(after, JobStatus.COMPLETED) == [done]
    finally:
        await after.close()


# --- find_by_idempotency_key ---------------------------------------------------------------
async def test_a_key_names_one_job_per_owner_within_its_window(store: JobStore) -> None:
    alice, bob = "a" * 64, "b" * 64
    first = record(owner_fingerprint=alice, idempotency_key="k", submitted_at=T0)
    await store.create(first)
    second = record(owner_fingerprint=alice, idempotency_key="k",
                    submitted_at=T0 + timedelta(hours=23))
    with pytest.raises(KeyTaken):
        await store.create(second)
    assert await store.get(second.job_id) is None  # refused: nothing stored
    bobs = record(owner_fingerprint=bob, idempotency_key="k", submitted_at=T0)
    other_key = record(owner_fingerprint=alice, idempotency_key="other", submitted_at=T0)
    for r in (bobs, other_key):
        await store.create(r)

    assert await store.find_by_idempotency_key(alice, "k") == first
    assert await store.find_by_idempotency_key(bob, "k") == bobs
    assert await store.find_by_idempotency_key(alice, "other") == other_key
    assert await store.find_by_idempotency_key("c" * 64, "k") is None
    assert await store.find_by_idempotency_key(alice, "missing") is None


async def test_a_key_is_found_with_the_digest_of_its_request(store: JobStore) -> None:
    keyed = record(owner_fingerprint="a" * 64, idempotency_key="k", request_digest="9" * 64)
    older = record(owner_fingerprint="b" * 64, idempotency_key="k")  # an earlier version's
    for r in (keyed, older):
        await store.create(r)
    found = await store.find_by_idempotency_key("a" * 64, "k")
    assert found is not None and found.request_digest == "9" * 64
    found = await store.find_by_idempotency_key("b" * 64, "k")
    assert found is not None and found.request_digest == ""


async def test_a_key_past_its_window_is_taken_by_the_newer_job(store: JobStore) -> None:
    older = record(idempotency_key="k", submitted_at=T0)
    newer = record(idempotency_key="k", submitted_at=T0 + timedelta(hours=24, seconds=1))
    await store.create(older)
    await store.create(newer)
    assert await store.find_by_idempotency_key(older.owner_fingerprint, "k") == newer


async def test_racing_creates_with_one_key_store_exactly_one_job(store: JobStore) -> None:
    racers = [record(idempotency_key="race", submitted_at=T0 + timedelta(microseconds=i))
              for i in range(6)]
    outcomes = await asyncio.gather(*(store.create(r) for r in racers), return_exceptions=True)
    won = [r for r, outcome in zip(racers, outcomes, strict=True) if outcome is None]
    assert len(won) == 1
    assert all(isinstance(o, KeyTaken) for o in outcomes if o is not None), outcomes
    assert await store.find_by_idempotency_key(won[0].owner_fingerprint, "race") == won[0]
    for loser in racers:
        if loser is not won[0]:
            assert await store.get(loser.job_id) is None


async def test_find_by_idempotency_key_ignores_records_without_a_key(store: JobStore) -> None:
    await store.create(record(idempotency_key=""))
    assert await store.find_by_idempotency_key("f" * 64, "") is None


# --- lifecycle -----------------------------------------------------------------------------
async def test_close_is_idempotent_and_later_calls_raise_store_error(open_store: Opener) -> None:
    job_store = open_store()
    await job_store.create(record())
    await job_store.close()
    await job_store.close()
    with pytest.raises(StoreError):
        await job_store.get(str(uuid.uuid4()))


async def test_close_of_an_unused_store_is_idempotent(open_store: Opener) -> None:
    job_store = open_store()
    await job_store.close()
    await job_store.close()


async def test_records_survive_closing_and_reopening_the_store(open_store: Opener) -> None:
    before = open_store()
    queued, moved = record(), record()
    await before.create(queued)
    await before.create(moved)
    await before.transition(moved, running(moved))
    await before.close()

    after = open_store()
    try:
        assert await after.get(queued.job_id) == queued
        assert await after.get(moved.job_id) == running(moved)
        assert await collect(after, JobStatus.QUEUED) == [queued]
        assert await after.transition(moved, running(moved, node="qpu-2")) is False
    finally:
        await after.close()


# --- DynamoDB only: the TTL attribute ------------------------------------------------------
@pytest.fixture
def dynamodb(dynamodb_endpoint: str) -> tuple[Any, str]:
    """A raw client and a fresh table, to read items as DynamoDB holds them."""
    return aws_client("dynamodb", dynamodb_endpoint), _dynamodb_table(dynamodb_endpoint)


def _raw_item(client: Any, table: str, job_id: str) -> dict[str, Any]:
    item: dict[str, Any] = client.get_item(TableName=table, Key={"job_id": {"S": job_id}})["Item"]
    return item


@pytest.mark.parametrize(
    "final", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED]
)
async def test_dynamodb_final_records_expire_30_days_after_they_finish(
    dynamodb: tuple[Any, str], final: JobStatus
) -> None:
    client, table = dynamodb
    job_store = DynamoDbJobStore(client, table)
    try:
        queued = record()
        await job_store.create(queued)
        assert "job_expiry" not in _raw_item(client, table, queued.job_id)
        await job_store.transition(queued, running(queued))
        assert "job_expiry" not in _raw_item(client, table, queued.job_id)

        done = finished(running(queued), final)
        assert await job_store.transition(running(queued), done)
        expiry = _raw_item(client, table, queued.job_id)["job_expiry"]
        assert done.finished_at is not None
        expected = (done.finished_at + timedelta(days=30)).timestamp()
        assert abs(int(expiry["N"]) - expected) <= 1
    finally:
        await job_store.close()


# --- SQLite only: the recovery's read maps the file for its duration ------------------------
async def test_a_recovery_read_maps_the_database_only_while_it_reads(tmp_path: Path) -> None:
    job_store = SqliteJobStore(tmp_path / "jobs.sqlite3", page_size=2, queued_page_size=2)
    try:
        for _ in range(5):
            await job_store.create(record())

        def mapped() -> int:
            return int(job_store._connection().execute("PRAGMA mmap_size").fetchone()[0])

        sizes = []
        async for _ in job_store.list_queued():
            sizes.append(await job_store._calls.run(mapped))
        assert len(sizes) == 5 and min(sizes) > 0
        assert await job_store._calls.run(mapped) == 0
    finally:
        await job_store.close()


# --- faults become StoreError --------------------------------------------------------------
@pytest.fixture(params=["sqlite-corrupt-file", "sqlite-unopenable-path", "dynamodb-no-table"])
async def broken_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    job_store: JobStore
    if request.param == "sqlite-corrupt-file":
        path = tmp_path / "jobs.sqlite3"
        path.write_bytes(b"this is not a SQLite database\n" * 200)
        job_store = SqliteJobStore(path)
    elif request.param == "sqlite-unopenable-path":
        # A directory nobody can create, even root: its would-be parent is a regular file.
        (tmp_path / "a-file").write_text("")
        job_store = SqliteJobStore(tmp_path / "a-file" / "jobs.sqlite3")
    else:
        endpoint = endpoint_of(request)
        job_store = DynamoDbJobStore(aws_client("dynamodb", endpoint), "no-such-table")
    yield job_store
    await job_store.close()


async def test_every_call_on_a_broken_store_raises_store_error(broken_store: JobStore) -> None:
    queued = record()
    with pytest.raises(StoreError):
        await broken_store.create(queued)
    with pytest.raises(StoreError):
        await broken_store.get(queued.job_id)
    with pytest.raises(StoreError):
        await broken_store.transition(queued, running(queued))
    with pytest.raises(StoreError):
        await collect(broken_store, JobStatus.QUEUED)
    with pytest.raises(StoreError):
        await broken_store.find_by_idempotency_key(queued.owner_fingerprint, "k")


# --- the scheduler's own documents (bookings, sessions) ---------------------------------------
async def test_a_document_is_written_once_per_version_and_read_back_after_a_restart(
        open_store: Opener) -> None:
    store = open_store()
    assert await store.read_document("bookings") is None
    assert await store.write_document("bookings", b"first", 0)
    assert not await store.write_document("bookings", b"raced", 0)  # another wrote it first
    assert await store.write_document("bookings", b"second", 1)
    assert not await store.write_document("bookings", b"stale", 1)  # read before "second"
    assert not await store.write_document("bookings", b"ahead", 5)
    assert await store.write_document("sessions", b"\x00\xff" * 1000, 0)  # binary, apart
    await store.close()
    again = open_store()
    found = await again.read_document("bookings")
    assert found is not None and (found.body, found.version) == (b"second", 2)
    other = await again.read_document("sessions")
    assert other is not None and (other.body, other.version) == (b"\x00\xff" * 1000, 1)
    await again.close()


async def test_documents_are_no_jobs_to_recovery_or_listings(store: JobStore) -> None:
    job = record()
    await store.create(job)
    assert await store.write_document("bookings", b"{}", 0)
    assert [r.job_id async for r in store.list_by_status(JobStatus.QUEUED)] == [job.job_id]
    assert [r.job_id async for r in store.list_queued()] == [job.job_id]
    listed = [r async for r in store.list_newest_first(None, T0 - timedelta(days=1),
                                                        T0 + timedelta(days=1))]
    assert [r.job_id for r in listed if isinstance(r, JobRecord)] == [job.job_id]

"""The JobStore's listing by owner and time (the extension's ListJobs and GetUsage), on both
store families; and DynamoDB's owner-index, missing and then added."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from job_manager import listing
from job_manager.model import JobRecord, JobStatus
from job_manager.stores import IndexMissing, JobStore
from job_manager.stores.dynamodb_job_store import DynamoDbJobStore, create_table
from job_manager.stores.sqlite_job_store import SqliteJobStore
from tests.contract import test_job_store_contract as contract
from tests.contract.conftest import endpoint_of
from tests.contract.test_job_store_contract import T0, record
from tests.helpers import aws_client

open_store = contract.open_store  # the same fixtures: both store families
store = contract.store
ALICE, BOB = "a" * 64, "b" * 64
WIDE = (T0 - timedelta(days=1), T0 + timedelta(days=1))
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # a listing's default start (jobs_service.py)


async def listed(store: JobStore, owner: str | None, since: Any = WIDE[0],
                 until: Any = WIDE[1]) -> list[JobRecord]:
    return [r async for r in store.list_newest_first(owner, since, until)
            if isinstance(r, JobRecord)]


async def test_an_owners_jobs_come_newest_first_across_pages_and_no_one_elses(
        store: JobStore) -> None:
    alices = [record(owner_fingerprint=ALICE, submitted_at=T0 + timedelta(seconds=i))
              for i in range(7)]
    bobs = [record(owner_fingerprint=BOB, submitted_at=T0 + timedelta(seconds=i, microseconds=5))
            for i in range(3)]
    for r in [*alices, *bobs]:
        await store.create(r)
    assert [r.job_id for r in await listed(store, ALICE)] == [r.job_id for r in alices[::-1]]
    everyone = await listed(store, None)
    assert [r.submitted_at for r in everyone] == sorted(
        (r.submitted_at for r in [*alices, *bobs]), reverse=True)


async def test_the_period_bounds_are_included_and_nothing_outside(store: JobStore) -> None:
    made = [record(owner_fingerprint=ALICE, submitted_at=T0 + timedelta(seconds=i))
            for i in range(5)]
    for r in made:
        await store.create(r)
    inside = await listed(store, ALICE, T0 + timedelta(seconds=1), T0 + timedelta(seconds=3))
    assert [r.job_id for r in inside] == [made[3].job_id, made[2].job_id, made[1].job_id]
    assert await listed(store, None, T0 + timedelta(seconds=9), T0 + timedelta(seconds=10)) == []


async def test_a_changed_status_keeps_the_jobs_place(store: JobStore) -> None:
    made = [record(owner_fingerprint=ALICE, submitted_at=T0 + timedelta(seconds=i))
            for i in range(4)]
    for r in made:
        await store.create(r)
    await store.transition(made[1], replace(made[1], status=JobStatus.CANCELLED))
    after = await listed(store, ALICE)
    assert [r.job_id for r in after] == [r.job_id for r in made[::-1]]
    assert after[2].status is JobStatus.CANCELLED


# --- DynamoDB without the owner index (the original's table) -------------------------------
@pytest.fixture
async def original_table(
        dynamodb_endpoint: str) -> AsyncIterator[tuple[DynamoDbJobStore, Any, str]]:
    client = aws_client("dynamodb", dynamodb_endpoint)
    name = f"original-{uuid.uuid4().hex[:12]}"
    create_table(client, name, owner_index=False)
    job_store = DynamoDbJobStore(client, name)
    yield job_store, client, name
    await job_store.close()


async def test_listing_without_the_indexes_says_so_and_adding_them_makes_it_work(
        original_table: tuple[DynamoDbJobStore, Any, str]) -> None:
    job_store, client, name = original_table
    mine = record(owner_fingerprint=ALICE)
    await job_store.create(mine)
    with pytest.raises(IndexMissing) as missing:
        await listed(job_store, ALICE)
    assert missing.value.index == "owner-index"
    with pytest.raises(IndexMissing) as missing:
        await listed(job_store, None)
    assert missing.value.index == "submitted-index"
    assert await job_store.add_listing_indexes() == ["owner-index", "submitted-index"]
    assert await job_store.add_listing_indexes() == []  # there already: nothing to do
    indexes = client.describe_table(TableName=name)["Table"]["GlobalSecondaryIndexes"]
    assert {i["IndexName"] for i in indexes} == {"status-index", "owner-index", "submitted-index"}
    assert [r.job_id for r in await listed(job_store, ALICE)] == [mine.job_id]
    assert [r.job_id for r in await listed(job_store, None)] == [mine.job_id]


async def test_records_written_without_their_month_are_listed_for_every_owner_once_marked(
        original_table: tuple[DynamoDbJobStore, Any, str]) -> None:
    # As the previous release wrote them, and as one writes them during a rolling upgrade.
    job_store, client, name = original_table
    await job_store.add_listing_indexes()
    made = [record(owner_fingerprint=ALICE, submitted_at=T0 - timedelta(days=40 * i))
            for i in range(3)]
    for r in made:
        await job_store.create(r)
        client.update_item(TableName=name, Key={"job_id": {"S": r.job_id}},
                           UpdateExpression="REMOVE submitted_month")
    assert await listed(job_store, None, EARLIEST) == []
    assert await job_store.mark_months() == 3
    assert await job_store.mark_months() == 0  # safe to run again
    assert [r.job_id for r in await listed(job_store, None, EARLIEST)] == [
        r.job_id for r in made]
    assert await job_store.get(made[1].job_id) == made[1]


async def test_pages_hold_every_job_once_when_many_share_one_instant(store: JobStore) -> None:
    # Records of one instant come from the store in any order; pages still split them
    # by job id, none lost and none twice.
    same = [record(owner_fingerprint=ALICE, submitted_at=T0) for _ in range(5)]
    older = record(owner_fingerprint=ALICE, submitted_at=T0 - timedelta(seconds=1))
    for r in [*same, older]:
        await store.create(r)
    seen: list[str] = []
    cursor: listing.Cursor | None = None
    while True:
        query = listing.ListQuery(ALICE, *WIDE, page_size=2, after=cursor)
        page, cursor = await listing.list_page(store, query)
        assert len(page) <= 2
        seen += [r.job_id for r in page]
        if cursor is None:
            break
        cursor = listing.Cursor.from_token(cursor.token())  # as a client sends it back
    assert seen == [*sorted((r.job_id for r in same), reverse=True), older.job_id]


async def test_filters_apply_before_the_page_is_cut(store: JobStore) -> None:
    made = [record(owner_fingerprint=ALICE, submitted_at=T0 + timedelta(seconds=i),
                   backend="qpu" if i % 2 else "emulator") for i in range(6)]
    for r in made:
        await store.create(r)
    query = listing.ListQuery(ALICE, *WIDE, backend="qpu", page_size=2)
    page, cursor = await listing.list_page(store, query)
    assert [r.job_id for r in page] == [made[5].job_id, made[3].job_id] and cursor is not None
    rest, last = await listing.list_page(store, replace(query, after=cursor))
    assert [r.job_id for r in rest] == [made[1].job_id] and last is None


# --- what a page costs: in proportion to the page, never to the table (issue 27, item 6) ---
class Meter:
    """The work a store's reads cost, counted from outside the store: SQLite's virtual
    machine steps (a progress handler on every connection it opens), DynamoDB's items
    read (ScannedCount: before any filter) and its requests."""

    STEPS = 100  # SQLite steps per call of the progress handler

    def __init__(self) -> None:
        self.cost = 0
        self.requests = 0

    def sqlite_step(self) -> int:
        self.cost += self.STEPS
        return 0  # go on

    def read(self, answer: dict[str, Any]) -> dict[str, Any]:
        self.requests += 1
        self.cost += int(answer.get("ScannedCount", len(answer.get("Items", []))))
        return answer


class CountingClient:
    """A boto3 DynamoDB client whose Query and Scan answers are counted."""

    def __init__(self, inner: Any, meter: Meter) -> None:
        self._inner = inner
        self._meter = meter

    def query(self, **request: Any) -> dict[str, Any]:
        return self._meter.read(self._inner.query(**request))

    def scan(self, **request: Any) -> dict[str, Any]:
        return self._meter.read(self._inner.scan(**request))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


BACKENDS = ["sqlite", "dynamodb", "dynamodb-plain-moto"]


@contextlib.asynccontextmanager
async def metered_store(request: pytest.FixtureRequest, directory: Path,
                        monkeypatch: pytest.MonkeyPatch
                        ) -> AsyncIterator[tuple[JobStore, Meter]]:
    """A store of ``request.param``'s backend as production configures it (default page
    sizes), and its meter."""
    meter = Meter()
    job_store: JobStore
    if request.param == "sqlite":
        connect = sqlite3.connect

        def metered_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = connect(*args, **kwargs)
            conn.set_progress_handler(meter.sqlite_step, Meter.STEPS)
            return conn

        monkeypatch.setattr(sqlite3, "connect", metered_connect)
        job_store = SqliteJobStore(directory / "jobs.sqlite3")
    else:
        endpoint = endpoint_of(request)
        client = aws_client("dynamodb", endpoint)
        name = f"jobs-{uuid.uuid4().hex[:12]}"
        create_table(client, name)
        job_store = DynamoDbJobStore(CountingClient(client, meter), name)
    try:
        yield job_store, meter
    finally:
        await job_store.close()


@pytest.fixture(params=BACKENDS)
async def metered(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[JobStore, Meter]]:
    """A store as production configures it (default page sizes), and its meter."""
    async with metered_store(request, tmp_path, monkeypatch) as found:
        yield found


async def create_all(store: JobStore, records: list[JobRecord]) -> None:
    for start in range(0, len(records), 100):
        await asyncio.gather(*(store.create(r) for r in records[start:start + 100]))


def older_jobs(count: int, before: datetime) -> list[JobRecord]:
    """Jobs of Alice and Bob in turn, a second apart, all before ``before``."""
    return [record(owner_fingerprint=(ALICE, BOB)[i % 2],
                   submitted_at=before - timedelta(seconds=i + 1)) for i in range(count)]


async def two_pages_cost(store: JobStore, meter: Meter, owner: str | None) -> int:
    meter.cost = 0
    query = listing.ListQuery(owner, EARLIEST, T0 + timedelta(days=1), page_size=10)
    page, cursor = await listing.list_page(store, query)
    assert len(page) == 10 and cursor is not None
    page, cursor = await listing.list_page(store, replace(query, after=cursor))
    assert len(page) == 10 and cursor is not None
    return meter.cost


async def usage_cost(store: JobStore, meter: Meter) -> tuple[int, dict[str, Any]]:
    """What every owner's usage of the minute after T0 costs, and the totals it gave."""
    meter.cost = 0
    totals = await listing.usage(store, None, T0, T0 + timedelta(minutes=1), lambda _: 0)
    return meter.cost, dict(totals)


OWNERS = {"one owner": ALICE, "every owner": None}


@dataclass(frozen=True)
class Growth:
    """What the same reads cost with 130 jobs stored, and again with 730."""

    pages: dict[str, tuple[int, int]]  # by OWNERS' name: two pages' cost, few and many
    usage: tuple[int, int]
    usage_totals: tuple[dict[str, Any], dict[str, Any]]


@pytest.fixture(scope="module", params=BACKENDS)
def growth(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Growth:
    """The reads the two tests below compare, measured on one store per backend (they only
    read, and read the same jobs): with 30 of Alice's jobs in the period and 100 older
    ones of Alice and Bob, then once 600 more older ones are stored."""
    directory = tmp_path_factory.mktemp("growth")

    async def measure() -> Growth:
        with pytest.MonkeyPatch.context() as monkeypatch:
            async with metered_store(request, directory, monkeypatch) as (store, meter):
                recent = [record(owner_fingerprint=ALICE, submitted_at=T0 + timedelta(seconds=i))
                          for i in range(30)]
                await create_all(store, [*recent, *older_jobs(100, T0)])
                few = {name: await two_pages_cost(store, meter, owner)
                       for name, owner in OWNERS.items()}
                few_usage, few_totals = await usage_cost(store, meter)
                await create_all(store, older_jobs(600, T0 - timedelta(seconds=100)))
                many = {name: await two_pages_cost(store, meter, owner)
                        for name, owner in OWNERS.items()}
                many_usage, many_totals = await usage_cost(store, meter)
        return Growth({name: (few[name], many[name]) for name in OWNERS},
                      (few_usage, many_usage), (few_totals, many_totals))

    return asyncio.run(measure())


@pytest.mark.parametrize("owner", list(OWNERS))
def test_a_page_costs_the_same_however_many_older_jobs_the_store_holds(
        growth: Growth, owner: str) -> None:
    few, many = growth.pages[owner]
    assert many < 2 * few, f"two pages cost {few} with 130 jobs stored, {many} with 730"


def test_every_owners_usage_of_a_period_costs_that_period_not_the_table(
        growth: Growth) -> None:
    for totals in growth.usage_totals:
        assert totals[ALICE].by_final_status == {} and BOB not in totals
    few, many = growth.usage
    assert many < 2 * few, f"the period's totals cost {few} with 130 jobs stored, {many} with 730"


async def test_a_page_walks_a_bounded_number_of_empty_months_and_its_token_goes_on(
        metered: tuple[JobStore, Meter]) -> None:
    # Every owner's listing on DynamoDB reads month by month: years without a job cost
    # pages with a token, each of a bounded number of requests, and no job is lost.
    store, meter = metered
    made = [record(owner_fingerprint=ALICE, submitted_at=T0 - timedelta(days=365 * i))
            for i in (0, 5, 6)]
    await create_all(store, made)
    seen: list[str] = []
    cursor: listing.Cursor | None = None
    pages = 0
    while True:
        meter.requests = 0
        query = listing.ListQuery(None, EARLIEST, T0, page_size=10, after=cursor)
        page, cursor = await listing.list_page(store, query)
        pages += 1
        # Two years' months a page, and the month it resumes in: not 27 years' at once.
        assert meter.requests <= 25
        seen += [r.job_id for r in page]
        if cursor is None:
            break
        cursor = listing.Cursor.from_token(cursor.token())  # as a client sends it back
    assert seen == [r.job_id for r in made]
    assert pages <= 2 + (T0.year - EARLIEST.year + 1) * 12 // 24


async def test_a_narrow_filter_reads_a_bounded_share_per_page_and_loses_nothing(
        metered: tuple[JobStore, Meter]) -> None:
    store, meter = metered
    made = [record(owner_fingerprint=ALICE, submitted_at=T0 - timedelta(seconds=i),
                   backend="qpu" if i % 250 == 0 else "emulator") for i in range(600)]
    await create_all(store, made)
    seen: list[str] = []
    cursor: listing.Cursor | None = None
    while True:
        meter.cost = meter.requests = 0
        query = listing.ListQuery(ALICE, EARLIEST, T0, backend="qpu", page_size=2,
                                  after=cursor)
        page, cursor = await listing.list_page(store, query)
        if meter.requests:  # DynamoDB: items read; before, the first page read 500 of them
            assert meter.cost <= 2 * listing.MIN_READS
        seen += [r.job_id for r in page]
        if cursor is None:
            break
        cursor = listing.Cursor.from_token(cursor.token())
    assert seen == [made[0].job_id, made[250].job_id, made[500].job_id]

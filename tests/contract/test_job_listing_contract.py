"""The JobStore's listing by owner and time (the extension's ListJobs and GetUsage), on both
store families; and DynamoDB's owner-index, missing and then added."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from job_manager import listing
from job_manager.model import JobRecord, JobStatus
from job_manager.stores import IndexMissing, JobStore
from job_manager.stores.dynamodb_job_store import DynamoDbJobStore, create_table
from tests.contract import test_job_store_contract as contract
from tests.contract.test_job_store_contract import T0, record
from tests.helpers import aws_client

open_store = contract.open_store  # the same fixtures: both store families
store = contract.store
ALICE, BOB = "a" * 64, "b" * 64
WIDE = (T0 - timedelta(days=1), T0 + timedelta(days=1))


async def listed(store: JobStore, owner: str | None, since: Any = WIDE[0],
                 until: Any = WIDE[1]) -> list[JobRecord]:
    return [r async for r in store.list_newest_first(owner, since, until)]


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
async def original_table(moto_endpoint: str) -> AsyncIterator[tuple[DynamoDbJobStore, Any, str]]:
    client = aws_client("dynamodb", moto_endpoint)
    name = f"original-{uuid.uuid4().hex[:12]}"
    create_table(client, name, owner_index=False)
    job_store = DynamoDbJobStore(client, name)
    yield job_store, client, name
    await job_store.close()


async def test_listing_without_the_owner_index_says_so_and_adding_it_makes_it_work(
        original_table: tuple[DynamoDbJobStore, Any, str]) -> None:
    job_store, client, name = original_table
    mine = record(owner_fingerprint=ALICE)
    await job_store.create(mine)
    with pytest.raises(IndexMissing):
        await listed(job_store, ALICE)
    assert await job_store.add_owner_index() is True
    assert await job_store.add_owner_index() is False  # there already: nothing to do
    indexes = client.describe_table(TableName=name)["Table"]["GlobalSecondaryIndexes"]
    assert {i["IndexName"] for i in indexes} == {"status-index", "owner-index"}
    assert [r.job_id for r in await listed(job_store, ALICE)] == [mine.job_id]


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

"""The standalone store's listings (ListJobs, GetUsage): each page walks an index and
sorts nothing, a file of the previous version gets those indexes when opened, and a
listing never holds up the job path on the store's one writer (issue 27, item 6)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest

from job_manager.model import JobRecord, JobStatus
from job_manager.stores import codec
from job_manager.stores.sqlite_job_store import SqliteJobStore
from tests.contract.test_job_store_contract import T0, record, running

ALICE = "a" * 64
WIDE = (T0 - timedelta(days=1), T0 + timedelta(days=1))
LISTING = "ORDER BY submitted_at DESC"  # in every listing's query, and in no other

# The schema of the previous version's files, which this one must open as they are.
PREVIOUS_SCHEMA = """
CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    owner_fingerprint TEXT NOT NULL,
    idempotency_key TEXT,
    submitted_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX jobs_by_status ON jobs (status, job_id);
CREATE INDEX jobs_by_owner ON jobs (owner_fingerprint, submitted_at);
CREATE INDEX jobs_by_idempotency_key
    ON jobs (owner_fingerprint, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE inputs (job_id TEXT PRIMARY KEY, program BLOB NOT NULL);
"""


class Statements:
    """The SQL of every statement the store's connections run, as run (values bound),
    and a way to hold a listing's query under way until the test lets it go."""

    def __init__(self) -> None:
        self.run: list[str] = []
        self.hold = False
        self.held = threading.Event()
        self.release = threading.Event()

    def connect(self, real: Any) -> Any:
        def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = real(*args, **kwargs)
            current: list[str] = [""]

            def traced(sql: str) -> None:
                current[0] = sql
                self.run.append(sql)

            def step() -> int:
                if self.hold and LISTING in current[0]:
                    self.held.set()
                    self.release.wait()
                return 0

            conn.set_trace_callback(traced)
            conn.set_progress_handler(step, 10)
            return conn

        return connect

    def listings(self) -> list[str]:
        return [sql for sql in self.run if LISTING in sql]


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[Statements]:
    seen = Statements()
    monkeypatch.setattr(sqlite3, "connect", seen.connect(sqlite3.connect))
    yield seen
    seen.release.set()


@pytest.fixture
async def store(tmp_path: Path, statements: Statements) -> AsyncIterator[SqliteJobStore]:
    job_store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    await job_store.open()
    yield job_store
    await job_store.close()


def plan(path: Path, sql: str) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]


async def listed(store: SqliteJobStore, owner: str | None) -> list[str]:
    return [r.job_id async for r in store.list_newest_first(owner, *WIDE)
            if isinstance(r, JobRecord)]


@pytest.mark.parametrize("owner", [ALICE, None], ids=["one owner", "every owner"])
async def test_each_listing_query_walks_an_index_and_sorts_nothing(
        store: SqliteJobStore, statements: Statements, tmp_path: Path, owner: str | None) -> None:
    for i in range(3):
        await store.create(record(owner_fingerprint=ALICE, submitted_at=T0 + timedelta(seconds=i)))
    assert len(await listed(store, owner)) == 3
    assert statements.listings()
    for sql in statements.listings():
        steps = plan(tmp_path / "jobs.sqlite3", sql)
        assert all("USING INDEX" in s or "USING COVERING INDEX" in s for s in steps), steps
        assert not any("TEMP B-TREE" in s for s in steps), steps


async def test_a_file_of_the_previous_version_gets_the_listing_indexes_when_opened(
        tmp_path: Path, statements: Statements) -> None:
    path = tmp_path / "jobs.sqlite3"
    before = record(owner_fingerprint=ALICE)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.executescript(PREVIOUS_SCHEMA)
        conn.execute("INSERT INTO jobs VALUES (?, ?, ?, NULL, ?, ?)", (
            before.job_id, "QUEUED", ALICE, T0.astimezone(UTC).isoformat(),
            json.dumps(codec.encode(before))))
    job_store = SqliteJobStore(path)
    try:
        later = record(owner_fingerprint=ALICE, submitted_at=T0 + timedelta(seconds=1))
        await job_store.create(later)
        assert await listed(job_store, None) == [later.job_id, before.job_id]
        assert await listed(job_store, ALICE) == [later.job_id, before.job_id]
    finally:
        await job_store.close()
    for sql in statements.listings():
        assert not any("TEMP B-TREE" in s for s in plan(path, sql))


async def test_a_listing_under_way_holds_up_no_submission_and_no_hand_over(
        store: SqliteJobStore, statements: Statements) -> None:
    for i in range(3):
        await store.create(record(owner_fingerprint=ALICE, submitted_at=T0 + timedelta(seconds=i)))
    statements.hold = True
    listing = asyncio.create_task(listed(store, None))
    try:
        assert await asyncio.to_thread(statements.held.wait, 30)  # its query is under way
        queued = record(owner_fingerprint=ALICE)
        # Before: both waited behind the held query on the store's one thread (the
        # bound only turns that hang into a failure).
        await asyncio.wait_for(store.create(queued), 30)
        assert await asyncio.wait_for(store.transition(queued, running(queued)), 30)
        assert not listing.done()
    finally:
        statements.release.set()
    assert len(await listing) == 3
    stored = await store.get(queued.job_id)
    assert stored is not None and stored.status is JobStatus.RUNNING

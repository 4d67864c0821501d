"""The standalone stores keep a job's program in the job database, beside its record.

A submission's program and record are one SQLite transaction: both are stored, or
neither. Programs an older data directory kept as ``{job_id}.in.proto`` files are still
served and deleted. (docs/design.md, "Standalone storage".) The rest of the PayloadStore
contract runs on this store in test_payload_store_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from common.clock import FakeClock
from job_manager.stores import InputsBesideRecords, KeyTaken, StoreError
from job_manager.stores.local_payload_store import LocalPayloadStore, SqliteInputsPayloadStore
from job_manager.stores.payload_store import input_key
from job_manager.stores.sqlite_job_store import SqliteJobStore
from job_manager.stores.url_signer import UrlSigner
from tests.contract.test_job_store_contract import T0, finished, record, running


class Stores:
    """The two standalone stores over one data directory, as
    scheduler/wiring/standalone.py opens them."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.jobs = SqliteJobStore(data_dir / "jobs.sqlite3")
        self.payloads = SqliteInputsPayloadStore(
            data_dir / "payloads", UrlSigner.from_key_file(data_dir / "url.key"),
            "http://127.0.0.1:9", FakeClock(T0), self.jobs)

    async def close(self) -> None:
        await self.payloads.close()
        await self.jobs.close()

    def input_rows(self) -> list[str]:
        """The job ids the database holds a program for, read straight from the file."""
        with contextlib.closing(sqlite3.connect(self.data_dir / "jobs.sqlite3")) as conn:
            return sorted(row[0] for row in conn.execute("SELECT job_id FROM inputs"))


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    opened = Stores(tmp_path)
    yield opened
    await opened.close()


async def test_the_standalone_payload_store_keeps_inputs_beside_records(stores: Stores) -> None:
    assert isinstance(stores.payloads, InputsBesideRecords)
    plain = LocalPayloadStore(stores.data_dir / "other", UrlSigner(b"k" * 32), "http://x",
                              FakeClock(T0))
    assert not isinstance(plain, InputsBesideRecords)  # it writes programs as files
    await plain.close()


async def test_a_submission_stores_record_and_program_in_the_database_only(
        stores: Stores) -> None:
    queued = record()
    await stores.payloads.create_with_input(queued, b"program")
    assert await stores.jobs.get(queued.job_id) == queued
    assert await stores.payloads.get_input(queued.job_id) == b"program"
    assert stores.input_rows() == [queued.job_id]
    assert not (stores.data_dir / "payloads" / input_key(queued.job_id)).exists()


async def test_a_submission_whose_key_is_taken_stores_neither(stores: Stores) -> None:
    first = record(idempotency_key="k")
    second = record(idempotency_key="k", submitted_at=T0 + timedelta(seconds=1))
    await stores.payloads.create_with_input(first, b"first")
    with pytest.raises(KeyTaken):
        await stores.payloads.create_with_input(second, b"second")
    assert await stores.jobs.get(second.job_id) is None
    assert await stores.payloads.get_input(second.job_id) is None
    assert stores.input_rows() == [first.job_id]


async def test_a_submission_of_an_existing_id_keeps_the_first_program(stores: Stores) -> None:
    first = record()
    await stores.payloads.create_with_input(first, b"first")
    with pytest.raises(StoreError):
        await stores.payloads.create_with_input(replace(first, backend="other"), b"second")
    assert await stores.payloads.get_input(first.job_id) == b"first"
    assert await stores.jobs.get(first.job_id) == first


async def test_a_program_the_database_refuses_leaves_no_record(stores: Stores) -> None:
    await stores.jobs.open()
    # A real refusal inside the transaction, after the record's row was written in it.
    with contextlib.closing(sqlite3.connect(stores.data_dir / "jobs.sqlite3")) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON inputs "
                     "BEGIN SELECT RAISE(ABORT, 'no room for programs'); END")
        conn.commit()
    queued = record()
    with pytest.raises(StoreError, match="no room for programs"):
        await stores.payloads.create_with_input(queued, b"program")
    assert await stores.jobs.get(queued.job_id) is None
    assert stores.input_rows() == []


async def test_submissions_in_one_group_commit_each_keep_their_own_program(
        stores: Stores) -> None:
    jobs = [record() for _ in range(20)]
    await asyncio.gather(*(stores.payloads.create_with_input(job, job.job_id.encode())
                           for job in jobs))
    for job in jobs:
        assert await stores.payloads.get_input(job.job_id) == job.job_id.encode()


async def test_programs_survive_closing_and_reopening_the_data_directory(
        stores: Stores) -> None:
    queued = record()
    await stores.payloads.create_with_input(queued, b"\x00\xff program")
    await stores.close()
    reopened = Stores(stores.data_dir)
    try:
        assert await reopened.payloads.get_input(queued.job_id) == b"\x00\xff program"
    finally:
        await reopened.close()


async def test_an_older_data_directorys_program_file_is_served_and_deleted(
        stores: Stores) -> None:
    queued = record()
    await stores.jobs.create(queued)
    old_file = stores.data_dir / "payloads" / input_key(queued.job_id)
    old_file.write_bytes(b"written by an earlier version")
    assert await stores.payloads.get_input(queued.job_id) == b"written by an earlier version"
    await stores.payloads.delete_input(queued.job_id)
    assert not old_file.exists()
    assert await stores.payloads.get_input(queued.job_id) is None


async def test_delete_input_removes_the_program_and_keeps_the_record(stores: Stores) -> None:
    queued = record()
    await stores.payloads.create_with_input(queued, b"program")
    await stores.payloads.delete_input(queued.job_id)
    assert await stores.payloads.get_input(queued.job_id) is None
    assert await stores.jobs.get(queued.job_id) == queued


async def test_expired_finished_jobs_go_with_their_programs(stores: Stores) -> None:
    done, live = record(), record()
    for job in (done, live):
        await stores.payloads.create_with_input(job, b"program")
    run = running(done)
    await stores.jobs.transition(done, run)
    ended = finished(run)
    await stores.jobs.transition(run, ended)
    assert ended.finished_at is not None
    deleted = await stores.jobs.delete_finished_before(ended.finished_at + timedelta(seconds=1))
    assert deleted == [done.job_id]
    assert stores.input_rows() == [live.job_id]


async def test_newest_submission_is_the_latest_submitted_at(stores: Stores) -> None:
    assert await stores.jobs.newest_submission() is None
    await stores.jobs.create(record(submitted_at=T0 + timedelta(hours=1)))
    await stores.jobs.create(record(submitted_at=T0))
    assert await stores.jobs.newest_submission() == T0 + timedelta(hours=1)


async def test_unfinished_among_names_only_queued_and_running_records(stores: Stores) -> None:
    queued, moved, ended = record(), record(), record()
    for job in (queued, moved, ended):
        await stores.jobs.create(job)
    await stores.jobs.transition(moved, running(moved))
    await stores.jobs.transition(ended, running(ended))
    await stores.jobs.transition(running(ended), finished(running(ended)))
    asked = [queued.job_id, moved.job_id, ended.job_id, "no-such-job"]
    found = await stores.jobs.unfinished_among(asked)
    assert sorted(found, key=lambda r: r.job_id) == sorted([queued, running(moved)],
                                                           key=lambda r: r.job_id)


async def test_programs_are_read_together_by_job_id_and_a_missing_one_is_left_out(
        stores: Stores) -> None:
    first, second = record(), record()
    await stores.payloads.create_with_input(first, b"first")
    await stores.payloads.create_with_input(second, b"second")
    await stores.payloads.put_input(record().job_id, b"another job's")
    absent = record().job_id
    assert await stores.payloads.get_inputs([second.job_id, absent, first.job_id]) == {
        first.job_id: b"first", second.job_id: b"second"}
    assert await stores.payloads.get_inputs([]) == {}


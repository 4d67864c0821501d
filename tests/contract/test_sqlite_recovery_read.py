"""The SQLite store's recovery read (docs/design.md, "A queued job in memory"): SQLite picks
the plain records and reads their values out; whatever it gives, each QUEUED record comes
as the JSON decode gives it (codec.decode_lean, else codec.decode), an unreadable one is
reported and skipped, a newer format's comes whole for the recovery to skip."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from common import collector
from job_manager.model import RECORD_FORMAT, JobRecord, QueuedRow
from job_manager.stores import codec
from job_manager.stores.blocking import BlockingCalls
from job_manager.stores.sqlite_job_store import SqliteJobStore
from job_manager.stores.unreadable import UnreadableRecords
from tests.contract.test_job_store_contract import JST, T0, record

PLAIN = dict(codec.encode(record()))


def _as(**changes: Any) -> dict[str, Any]:
    """A plain record's row with ``changes`` (None: the field left out)."""
    row = {**PLAIN, **changes}
    return {name: value for name, value in row.items() if value is not None}


# Rows of every shape: the plain ones SQLite reads out, and the odd ones it must leave to
# the JSON decode (each odd in one way: a type this code does not write, a field more...).
ROWS: dict[str, Any] = {
    "plain": _as(),
    "plain, all set": _as(sdk_version="1.2", save_job=True, settings="CAE=",
                          input_size_bytes=7, timeout_ms=1500),
    "plain, escaped": _as(owner_name='名前 "q" \\ é\n', sdk_version="ü"),
    "plain, another offset": _as(submitted_at=(T0.astimezone(JST)).isoformat(),
                                 queued_at=(T0.astimezone(JST)).isoformat()),
    "previous release (no format_version)": _as(format_version=None),
    "no result sizes": _as(result_raw_size_bytes=None, result_encoded_size_bytes=None),
    "sdk_version null": _as(sdk_version=None) | {"sdk_version": None},
    "save_job 1": _as(save_job=1),
    "save_job null": _as() | {"save_job": None},
    "timeout_ms a float": _as(timeout_ms=60000.7),
    "timeout_ms text": _as(timeout_ms="60000"),
    "timeout_ms unreadable": _as(timeout_ms="sixty"),
    "backend a number": _as(backend=7),
    "backend true": _as(backend=True),
    "backend an object": _as(backend={"a": 1}),
    "backend missing": _as(backend=None),
    "backend null": _as() | {"backend": None},
    "role unknown": _as(role="visitor"),
    "settings not base64": _as(settings="%%%"),
    "queued_at not a time": _as(queued_at="yesterday", submitted_at="yesterday"),
    "queued later than submitted": _as(queued_at=(T0 + timedelta(seconds=1)).isoformat()),
    "a result size": _as(result_raw_size_bytes=5),
    "result size null": _as() | {"result_raw_size_bytes": None},
    "format_version null": _as() | {"format_version": None},
    "format_version a float": _as(format_version=1.0),
    "newer format": _as(format_version=RECORD_FORMAT + 1, priority_class="gold"),
    "a newer field": _as(priority_class="gold"),
    "tags": _as(tags='{"k":"v"}'),
    "another job's id": _as(job_id="someone-else"),
    "not an object": [1, 2, 3],
    # Text as written, JOB_ID replaced: json.loads keeps a repeated field's last value.
    "a field twice": json.dumps({**PLAIN, "job_id": "JOB_ID"})[:-1] + ', "backend": "qpu"}',
    "null in a string": _as(owner_name="null"),
}
NOT_JSON = "not json {"


def _reference(text: str) -> JobRecord | QueuedRow | None:
    """What the JSON decode makes of a stored text: lean, whole, or None (unreadable)."""
    try:
        return codec.decode_lean(json.loads(text)) or codec.decode(json.loads(text))
    except (KeyError, ValueError, TypeError, ArithmeticError, AttributeError):
        try:
            return codec.decode(json.loads(text))
        except (KeyError, ValueError, TypeError, ArithmeticError, AttributeError):
            return None


@pytest.mark.parametrize("page_size", [2, 5000])
async def test_every_queued_row_comes_as_the_json_decode_gives_it(
        tmp_path: Path, page_size: int) -> None:
    path = tmp_path / "jobs.sqlite3"
    unreadable = UnreadableRecords()
    store = SqliteJobStore(path, unreadable=unreadable, queued_page_size=page_size)
    await store.open()
    texts: dict[str, str] = {}
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for number, (name, row) in enumerate([*ROWS.items(), ("not JSON", NOT_JSON)]):
            job_id = f"{number:03d}-{name}"
            if isinstance(row, dict) and row.get("job_id") == PLAIN["job_id"]:
                row = {**row, "job_id": job_id}
            texts[job_id] = (row.replace("JOB_ID", job_id) if isinstance(row, str)
                             else json.dumps(row))
            conn.execute("INSERT INTO jobs VALUES (?, 'QUEUED', 'f', NULL, ?, ?)",
                         (job_id, T0.isoformat(), texts[job_id]))
    try:
        found = {item.job_id: item async for item in store.list_queued()}
    finally:
        await store.close()

    expected = {job_id: _reference(text) for job_id, text in texts.items()}
    readable = {job_id: item for job_id, item in expected.items() if item is not None}
    # Read back whole, a record of another job's id is listed under that id.
    assert {item.job_id for item in found.values()} == {
        item.job_id for item in readable.values()}
    assert sorted(found.values(), key=repr) == sorted(readable.values(), key=repr)
    assert len(unreadable) == len(expected) - len(readable) > 0
    lean = {item.job_id for item in found.values() if isinstance(item, QueuedRow)}
    assert {"000-plain", "001-plain, all set", "002-plain, escaped",
            "003-plain, another offset", "031-null in a string"} <= lean
    assert found["030-a field twice"] == codec.decode_lean(json.loads(texts["030-a field twice"]))
    newer = [item for item in found.values()
             if isinstance(item, JobRecord) and item.format_version > RECORD_FORMAT]
    assert [item.job_id for item in newer] == ["025-newer format"]


async def test_a_call_started_runs_before_the_event_loop_next_does() -> None:
    calls = BlockingCalls("test", max_workers=1, errors=(sqlite3.Error,))
    entered = threading.Event()
    try:
        answer = calls.start(entered.set)
        assert entered.wait(timeout=10)  # the loop is held here: the pool began alone
        await answer

        def broken() -> None:
            raise sqlite3.OperationalError("disk I/O error")

        with pytest.raises(Exception, match="test: OperationalError: disk I/O error"):
            await calls.start(broken)
    finally:
        calls.close()


async def test_a_recovery_read_left_early_leaves_no_call_behind(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3", queued_page_size=2)
    try:
        for _ in range(5):
            await store.create(record())
        async for _ in store.list_queued():
            break
        assert len([item async for item in store.list_queued()]) == 5
        await asyncio.sleep(0)
    finally:
        await store.close()


def test_the_collector_pauses_and_stays_as_it_was() -> None:
    import gc

    assert gc.isenabled()
    with collector.paused():
        assert not gc.isenabled()
        with collector.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()

"""Records that survive a rolling upgrade (docs/records.md), on both stores: two versions
of the record format on one table, in both directions.

A "newer scheduler" and "the previous release" are simulated by writing the table directly,
as they would: the newer one adds attributes this code does not know (and, for an
incompatible change, raises ``format_version``); the previous release puts whole items
without ``format_version``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from job_manager.model import RECORD_FORMAT, JobRecord, JobStatus
from job_manager.stores import JobStore, RecordTooNew, codec
from job_manager.stores.dynamodb_job_store import DynamoDbJobStore
from job_manager.stores.original_format import ORIGINAL_FORMAT
from job_manager.stores.sqlite_job_store import SqliteJobStore
from pb.mqc3_cloud.scheduler.v1 import job_pb2
from tests.contract.conftest import endpoint_of
from tests.contract.test_job_store_contract import (
    T0,
    _dynamodb_table,
    finished,
    full_record,
    record,
    running,
)
from tests.helpers import aws_client

NEWER = {"priority_class": "gold"}  # an attribute only a newer scheduler knows
ORIGINAL_ITEMS = Path(__file__).parent.parent / "data" / "original_records" / "items.json"


class RawTable(Protocol):
    """The store's data, read and written past the store, as another version would."""

    def read(self, job_id: str) -> dict[str, Any]: ...

    def write(self, attributes: dict[str, Any]) -> None: ...


class RawSqlite:
    def __init__(self, path: Path) -> None:
        self._path = path

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with contextlib.closing(sqlite3.connect(self._path, isolation_level=None)) as conn:
            yield conn

    def read(self, job_id: str) -> dict[str, Any]:
        with self._connection() as conn:
            (text,) = conn.execute("SELECT record FROM jobs WHERE job_id = ?",
                                   (job_id,)).fetchone()
        attributes: dict[str, Any] = json.loads(text)
        return attributes

    def write(self, attributes: dict[str, Any]) -> None:
        with self._connection() as conn:
            conn.execute("UPDATE jobs SET status = ?, record = ? WHERE job_id = ?",
                         (attributes["status"], json.dumps(attributes), attributes["job_id"]))


class RawDynamoDb:
    def __init__(self, client: Any, table: str) -> None:
        self._client, self._table = client, table

    def read(self, job_id: str) -> dict[str, Any]:
        item = self._client.get_item(TableName=self._table, Key={"job_id": {"S": job_id}},
                                     ConsistentRead=True)["Item"]
        return {name: TypeDeserializer().deserialize(value) for name, value in item.items()}

    def write(self, attributes: dict[str, Any]) -> None:
        self._client.put_item(TableName=self._table, Item={
            name: TypeSerializer().serialize(value) for name, value in attributes.items()})


@dataclass
class OneTable:
    store: JobStore
    raw: RawTable
    calls: list[str]  # DynamoDB's requests by operation name (SQLite: none)


@pytest.fixture(params=["sqlite", "dynamodb", "dynamodb-plain-moto"])
async def table(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OneTable]:
    calls: list[str] = []
    store: JobStore
    raw: RawTable
    if request.param == "sqlite":
        path = tmp_path / "jobs.sqlite3"
        store, raw = SqliteJobStore(path), RawSqlite(path)
    else:
        endpoint = endpoint_of(request)
        name, client = _dynamodb_table(endpoint), aws_client("dynamodb", endpoint)
        client.meta.events.register("before-call.dynamodb.*",
                                    lambda model, **_: calls.append(model.name))
        store, raw = DynamoDbJobStore(client, name), RawDynamoDb(client, name)
    yield OneTable(store, raw, calls)
    await store.close()


def newer_writer(raw: RawTable, job_id: str, format_version: int, **changes: Any) -> None:
    """What a newer scheduler writes: its own attribute, in its format, and ``changes``."""
    raw.write({**raw.read(job_id), **NEWER, "format_version": format_version, **changes})


def previous_release_writer(raw: RawTable, after: JobRecord) -> None:
    """What the release before format versions wrote: the whole record, without one."""
    row: dict[str, Any] = dict(codec.encode(after))
    del row["format_version"]
    raw.write(row)


# --- this code's own records -----------------------------------------------------------
async def test_a_new_record_carries_this_codes_format_version(table: OneTable) -> None:
    queued = record()
    await table.store.create(queued)
    assert table.raw.read(queued.job_id)["format_version"] == RECORD_FORMAT
    stored = await table.store.get(queued.job_id)
    assert stored == queued and not stored.read_only


# --- a newer scheduler's compatible attributes survive this one -------------------------
async def test_every_transition_keeps_an_attribute_it_does_not_know(table: OneTable) -> None:
    queued = replace(full_record(), status=JobStatus.QUEUED, dequeued_at=None,
                     finished_at=None, node_identity="", requeues=0)
    await table.store.create(queued)
    newer_writer(table.raw, queued.job_id, RECORD_FORMAT)
    taken = replace(running(queued), node_identity="lab node 1")
    requeued = replace(queued, requeues=1, status_detail="queued again", tags=())
    taken_again = replace(running(requeued), node_identity="lab node 2", tags=(("a", "b"),))
    done = finished(taken_again)
    path = [queued, taken, requeued, taken_again, done]
    for before, after in itertools.pairwise(path):
        assert await table.store.transition(before, after)
        stored = table.raw.read(queued.job_id)
        assert stored["priority_class"] == "gold", after.status
        assert await table.store.get(queued.job_id) == after


async def test_a_requeue_removes_what_it_empties(table: OneTable) -> None:
    queued = record()
    await table.store.create(queued)
    taken = replace(running(queued), node_identity="lab node 1", tags=(("a", "b"),))
    await table.store.transition(queued, taken)
    back = replace(queued, requeues=1)
    assert await table.store.transition(taken, back)
    stored = table.raw.read(queued.job_id)
    assert {"dequeued_at", "node_identity", "actual_backend", "tags"}.isdisjoint(stored)
    assert (stored["status"], stored["requeues"]) == ("QUEUED", 1)


# --- a newer format is served read-only ------------------------------------------------
async def test_a_record_of_a_newer_format_is_served_but_never_changed(table: OneTable) -> None:
    queued = record()
    await table.store.create(queued)
    newer_writer(table.raw, queued.job_id, RECORD_FORMAT + 1, status_detail="from the future")
    written = table.raw.read(queued.job_id)

    read = await table.store.get(queued.job_id)
    assert read is not None and read.read_only
    assert (read.format_version, read.status_detail) == (RECORD_FORMAT + 1, "from the future")
    with pytest.raises(RecordTooNew) as refused:
        await table.store.transition(read, running(read))
    assert (refused.value.job_id, refused.value.format_version) == (queued.job_id,
                                                                     RECORD_FORMAT + 1)
    assert table.raw.read(queued.job_id) == written


async def test_a_record_a_newer_scheduler_changed_after_it_was_read_is_not_rewritten(
        table: OneTable) -> None:
    queued = record()
    await table.store.create(queued)
    read = await table.store.get(queued.job_id)
    assert read is not None and not read.read_only
    newer_writer(table.raw, queued.job_id, RECORD_FORMAT + 1)  # meanwhile, a newer replica
    written = table.raw.read(queued.job_id)

    with pytest.raises(RecordTooNew):
        await table.store.transition(read, running(read))
    assert table.raw.read(queued.job_id) == written


async def test_a_changed_status_is_refused_as_before_whatever_the_format(
        table: OneTable) -> None:
    queued = record()
    await table.store.create(queued)
    newer_writer(table.raw, queued.job_id, RECORD_FORMAT, status="CANCELLED")
    assert await table.store.transition(queued, running(queued)) is False
    assert table.raw.read(queued.job_id)["status"] == "CANCELLED"


# --- the previous release, on the same table ----------------------------------------------
async def test_the_previous_release_and_this_one_take_turns_on_one_record(
        table: OneTable) -> None:
    queued = record(tags=(("team", "optics"),))
    await table.store.create(queued)
    previous_release_writer(table.raw, queued)  # it rewrote the record whole: no version
    assert "format_version" not in table.raw.read(queued.job_id)

    read = await table.store.get(queued.job_id)  # this code reads it as format 1
    assert read == queued and read.format_version == 1
    taken = running(queued)
    assert await table.store.transition(queued, taken)

    done = replace(finished(taken), finished_at=T0 + timedelta(seconds=30))
    previous_release_writer(table.raw, done)  # the previous release finishes it
    assert await table.store.get(queued.job_id) == done
    assert await table.store.transition(taken, finished(taken)) is False


# --- DynamoDB: one request per transition, and the original's records -------------------
@pytest.mark.parametrize("table", ["dynamodb"], indirect=True)
async def test_a_transition_is_one_update_request(table: OneTable) -> None:
    queued = record()
    await table.store.create(queued)
    table.calls.clear()
    assert await table.store.transition(queued, running(queued))
    assert not await table.store.transition(queued, running(queued, node="qpu-2"))
    assert table.calls == ["UpdateItem", "UpdateItem"]


@pytest.mark.parametrize("table", ["dynamodb"], indirect=True)
async def test_a_retried_write_that_had_landed_is_answered_as_done(table: OneTable) -> None:
    # botocore retries a request whose answer was lost (a timeout, a 5xx); the retry finds
    # the status changed by the first attempt. It is that write, not another's.
    queued = record()
    await table.store.create(queued)
    taken = running(queued)
    assert await table.store.transition(queued, taken)
    assert await table.store.transition(queued, taken)
    done = finished(taken)
    assert await table.store.transition(taken, done)
    assert await table.store.transition(taken, done)
    # Another writer's change is still a refusal, whatever the status it reached.
    assert not await table.store.transition(taken, finished(taken, JobStatus.FAILED))
    assert not await table.store.transition(queued, running(queued, node="qpu-2"))
    assert await table.store.get(queued.job_id) == done


@pytest.mark.parametrize("table", ["dynamodb"], indirect=True)
async def test_an_original_record_is_rewritten_whole_in_this_format(table: OneTable) -> None:
    items = json.loads(ORIGINAL_ITEMS.read_text())
    queued_id = items["job_id_by_status"]["QUEUED"]
    item = next(i for i in items["items"] if i["job_id"]["S"] == queued_id)
    table.raw.write({name: TypeDeserializer().deserialize(v) for name, v in item.items()})

    original = await table.store.get(queued_id)
    assert original is not None and original.format_version == ORIGINAL_FORMAT
    taken = running(original)
    assert await table.store.transition(original, taken)
    stored = table.raw.read(queued_id)
    assert "token" not in stored and "requested_backend" not in stored
    assert stored["format_version"] == RECORD_FORMAT
    assert await table.store.get(queued_id) == replace(taken, format_version=RECORD_FORMAT)


@pytest.mark.parametrize("table", ["dynamodb"], indirect=True)
async def test_the_way_back_leaves_a_record_of_a_newer_format_as_it_is(table: OneTable) -> None:
    ours, theirs = record(), record()
    await table.store.create(ours)
    await table.store.create(theirs)
    newer_writer(table.raw, theirs.job_id, RECORD_FORMAT + 1)
    written = table.raw.read(theirs.job_id)

    assert isinstance(table.store, DynamoDbJobStore)
    assert await table.store.export_queued_to_original(lambda _: "the way back") == 1
    assert table.raw.read(theirs.job_id) == written
    assert table.raw.read(ours.job_id)["token"] == "the way back"


@pytest.mark.parametrize("table", ["dynamodb"], indirect=True)
async def test_the_way_back_carries_the_extremes_of_the_wire_or_leaves_a_job_as_it_is(
        table: OneTable) -> None:
    # docs/job-rules.md, rule 18: the largest timeout goes back exactly; a squeezing level
    # DynamoDB cannot hold as a number (infinite) leaves its job in this scheduler's form
    # and stops no other.
    largest = job_pb2.JobExecutionSettings(backend="emulator", n_shots=2**31 - 1)
    largest.timeout.seconds, largest.timeout.nanos = 2**63 - 1, 999_999_999
    endless = job_pb2.JobExecutionSettings(backend="emulator", n_shots=1,
                                           resource_squeezing_level=float("inf"))
    longest = record(settings=largest.SerializeToString(), timeout_s=float(2**63))
    unwritable = record(settings=endless.SerializeToString())
    await table.store.create(unwritable)
    await table.store.create(longest)

    assert isinstance(table.store, DynamoDbJobStore)
    assert await table.store.export_queued_to_original(lambda _: "the way back") == 1
    back = await table.store.get(longest.job_id)
    assert back is not None and back.format_version == ORIGINAL_FORMAT
    timeout = job_pb2.JobExecutionSettings.FromString(back.settings).timeout
    assert (timeout.seconds, timeout.nanos) == (2**63 - 1, 999_999_999)
    assert "token" not in table.raw.read(unwritable.job_id)


@pytest.mark.parametrize("table", ["dynamodb"], indirect=True)
async def test_an_original_record_of_a_timeout_past_int64_seconds_is_read(
        table: OneTable) -> None:
    # What an original that kept the timeout as a float wrote for the largest one.
    items = json.loads(ORIGINAL_ITEMS.read_text())
    queued_id = items["job_id_by_status"]["QUEUED"]
    item = next(i for i in items["items"] if i["job_id"]["S"] == queued_id)
    attributes = {name: TypeDeserializer().deserialize(v) for name, v in item.items()}
    table.raw.write({**attributes, "max_elapsed_s": Decimal("9.223372036854776E+18")})

    original = await table.store.get(queued_id)
    assert original is not None and original.timeout_s == float(2**63)
    timeout = job_pb2.JobExecutionSettings.FromString(original.settings).timeout
    assert (timeout.seconds, timeout.nanos) == (2**63 - 1, 999_999_999)


# --- SQLite: a record that is not JSON ----------------------------------------------------
@pytest.mark.parametrize("table", ["sqlite"], indirect=True)
async def test_a_transition_of_a_record_that_is_not_json_is_refused_not_failed(
        table: OneTable, tmp_path: Path) -> None:
    broken, other = record(), record()
    await table.store.create(broken)
    await table.store.create(other)
    with contextlib.closing(sqlite3.connect(tmp_path / "jobs.sqlite3")) as conn, conn:
        conn.execute("UPDATE jobs SET record = 'not json' WHERE job_id = ?", (broken.job_id,))
    assert await table.store.transition(broken, running(broken)) is False
    assert await table.store.transition(other, running(other))

"""JobStore on DynamoDB: production's record of every job.

Table: partition key ``job_id``; GSI ``status-index`` on ``status`` (all attributes
projected) for recovery; TTL attribute ``job_expiry`` (epoch seconds) on final records.
That is the original deployment's table: nothing more is needed, but for the
extension's listings (owner-index, submitted-index: docs/migrating.md).

Idempotency keys live in the same table as small claim items, keyed
``idempotency-key#{owner fingerprint}#{sha256 of the key}`` (never a job id, which is a
UUID) and naming the job that holds the key. A keyed job and its claim are written in
one transaction whose condition is that the claim is free or past its window, so two
racing submissions with one key make one job, in one process or several. Claims carry
no ``status`` (the status index never sees them) and expire through ``job_expiry``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, AsyncIterator

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from job_manager.model import RECORD_FORMAT, JobRecord, JobStatus, QueuedRow
from job_manager.stores import codec
from job_manager.stores.blocking import BlockingCalls
from job_manager.stores.errors import (
    IndexMissing,
    KeyTaken,
    RecordTooNew,
    RecordUnreadable,
    StoreError,
)
from job_manager.stores.fence import Deposed, Fence
from job_manager.stores.fenced_commits import FencedCommits, cancellation_reasons
from job_manager.stores.job_store import Document, Reached
from job_manager.stores.original_format import (
    ORIGINAL_FORMAT,
    decode_original,
    encode_original,
    is_original,
)
from job_manager.stores.unreadable import UnreadableRecords

log = logging.getLogger(__name__)

STATUS_INDEX = "status-index"
# The extension's listings query the owner's jobs by time, and every owner's by month
# and time; the original's table lacks both and works without them (`scheduler.py
# migrate add-owner-index` adds them). A record's month is an attribute of this store's
# own, written with the record and derived from its submitted_at (docs/records.md).
OWNER_INDEX = "owner-index"
TIME_INDEX = "submitted-index"
MONTH = "submitted_month"
# The epoch of the leader's term that last wrote the job (docs/replicas.md, "Fence"): the
# hand-over and the report, written without the fence item, land only where no later
# term has written. The store's own, beside the record's fields, like MONTH.
TERM = "term"
FINISHED_JOB_RETENTION = timedelta(days=30)
CLAIM_PREFIX = "idempotency-key#"
# The scheduler's own small documents (bookings, sessions): items beside the jobs, with no
# status or owner, so no index and no listing sees them; their key is no job id's shape.
DOCUMENT_PREFIX = "scheduler-document#"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _cancelled_by_condition(exc: ClientError, index: int) -> bool:
    """Whether a cancelled transaction's ``index``-th item failed its condition."""
    return _failed_condition(cancellation_reasons(exc), index)


def _failed_condition(reasons: list[dict[str, Any]], index: int) -> bool:
    return len(reasons) > index and reasons[index].get("Code") == "ConditionalCheckFailed"


def _refused(job_id: str, item: Any, written: Written) -> bool:
    """A transition whose condition failed: True when the stored item (as the failure
    returned it) already holds what this write sets, False otherwise, RecordTooNew when it
    is of a newer format.

    The first case is this very write, landed by an attempt whose answer was lost (a
    timeout or a 5xx that botocore retried): the retry finds the status changed by itself.
    Taking that for a refusal would leave the job in a state memory does not know, such as
    RUNNING with no node holding it (docs/records.md, "A write whose answer was lost").
    """
    stored = {name: _deserializer.deserialize(value) for name, value in (item or {}).items()}
    to_set, to_remove = written
    if stored and all(stored.get(name) == value for name, value in to_set.items()) \
            and not any(name in stored for name in to_remove):
        return True
    if int(stored.get("format_version", RECORD_FORMAT)) > RECORD_FORMAT:
        raise RecordTooNew(job_id, int(stored["format_version"]))
    return False


def goes_alone(before: JobRecord, after: JobRecord) -> bool:
    """Whether a leader's transition goes out as a plain conditional write, not in a fenced
    transaction: the two every job's life makes, its hand-over and its node's report
    (docs/replicas.md, "Fence"). Any other change is rare and stays fenced."""
    return ((before.status is JobStatus.QUEUED and after.status is JobStatus.RUNNING)
            or (before.status is JobStatus.RUNNING
                and after.status in (JobStatus.COMPLETED, JobStatus.FAILED)))


def _term_of(item: Any) -> int:
    """The epoch of the term that last wrote a stored item (0: none wrote one)."""
    return int((item or {}).get(TERM, {}).get("N", 0))


# What a transition writes: the attributes it sets (before serialization) and those it removes.
Written = tuple[codec.Row, list[str]]


def claim_key(owner_fingerprint: str, key: str) -> str:
    """The item that says which job holds an owner's idempotency key."""
    return f"{CLAIM_PREFIX}{owner_fingerprint}#{hashlib.sha256(key.encode()).hexdigest()}"


def _epoch_s(moment: datetime) -> str:
    return str(int(moment.timestamp()))


class DynamoDbJobStore:
    """Records as DynamoDB items; each status change is one conditional update of the
    attributes it changes (docs/records.md)."""

    def __init__(
        self,
        client: Any,
        table_name: str,
        max_workers: int = 16,
        retention: timedelta = FINISHED_JOB_RETENTION,
        key_window: timedelta = timedelta(hours=24),
        status_index: str = STATUS_INDEX,
        unreadable: UnreadableRecords | None = None,
    ) -> None:
        self._unreadable = UnreadableRecords() if unreadable is None else unreadable
        self._client = client
        self._table = table_name
        self._status_index = status_index
        self._retention = retention
        self._key_window = key_window
        self._calls = BlockingCalls("dynamodb-jobs", max_workers, (ClientError, BotoCoreError))
        # Fenced writes go through one committer per fence item, batched: DynamoDB cancels
        # transactions that name one item side by side (docs/replicas.md, "Fence").
        self._fenced = FencedCommits(client, table_name, self._calls)

    def _row(self, record: JobRecord) -> codec.Row:
        """The item's attributes before serialization: the codec's row, its month for
        the listings and the TTL."""
        row = codec.encode(record)
        row[MONTH] = _month(record.submitted_at)
        if record.status.is_final and record.finished_at is not None:
            row["job_expiry"] = int((record.finished_at + self._retention).timestamp())
        return row

    def _item(self, record: JobRecord) -> dict[str, Any]:
        return {name: _serializer.serialize(value) for name, value in self._row(record).items()}

    def _record(self, item: dict[str, Any]) -> JobRecord:
        """The item as a record, in this scheduler's form or the original's.

        RecordUnreadable (reported once) when it is neither.
        """
        job_id = str(item.get("job_id", {}).get("S", "?"))
        try:
            values = {name: _deserializer.deserialize(v) for name, v in item.items()}
            return (decode_original(values) if is_original(values) else codec.decode(values))
        except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            self._unreadable.saw(job_id, why)
            raise RecordUnreadable(job_id, why) from None

    async def create(self, record: JobRecord, fence: Fence | None = None) -> None:
        item = self._item(record)
        if fence is not None:
            item[TERM] = {"N": str(fence.epoch)}
        new_job = {
            "TableName": self._table,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(job_id)",
        }
        claim = [{"Put": self._claim(record)}] if record.idempotency_key else []

        def put() -> None:
            try:
                self._client.put_item(**new_job)
            except ClientError as exc:
                if _conditional_failure(exc):
                    raise StoreError(f"job {record.job_id} already exists") from None
                raise

        def refused(reasons: list[dict[str, Any]] | None) -> None:
            # [the key's claim], the job: each may fail its condition.
            if reasons is None:
                return
            if claim and _failed_condition(reasons, 0):
                raise KeyTaken(record.idempotency_key)
            if _failed_condition(reasons, len(claim)):
                raise StoreError(f"job {record.job_id} already exists")

        def put_in_transaction() -> None:
            try:
                self._client.transact_write_items(TransactItems=[*claim, {"Put": new_job}])
            except ClientError as exc:
                if _cancelled_by_condition(exc, 0) or _cancelled_by_condition(exc, len(claim)):
                    refused(cancellation_reasons(exc))
                raise

        if fence is not None:
            keys = frozenset(item["Put"]["Item"]["job_id"]["S"]
                             for item in [*claim, {"Put": new_job}])
            await self._fenced.write(fence, [*claim, {"Put": new_job}], keys, refused,
                                     record.job_id)
            return
        await self._calls.run(put_in_transaction if claim else put)

    def _claim(self, record: JobRecord) -> dict[str, Any]:
        """The conditional put of a keyed record's claim: free, or past its window."""
        until = _epoch_s(record.submitted_at + self._key_window)
        return {
            "TableName": self._table,
            "Item": {
                "job_id": {"S": claim_key(record.owner_fingerprint, record.idempotency_key)},
                "claimed_job_id": {"S": record.job_id},
                "claim_until": {"N": until},
                "job_expiry": {"N": until},
            },
            "ConditionExpression": "attribute_not_exists(job_id) OR claim_until <= :now",
            "ExpressionAttributeValues": {":now": {"N": _epoch_s(record.submitted_at)}},
        }

    async def raise_fence(self, fence: Fence) -> None:
        """Before a leader's term reads a job: every fence item names it (fenced_commits)."""
        await self._fenced.raise_fence(fence)

    async def get(self, job_id: str) -> JobRecord | None:
        answer = await self._calls.run(
            lambda: self._client.get_item(
                TableName=self._table, Key={"job_id": {"S": job_id}}, ConsistentRead=True
            )
        )
        item = answer.get("Item")
        return self._record(item) if item else None

    async def transition(self, before: JobRecord, after: JobRecord,
                         fence: Fence | None = None) -> bool:
        if before.read_only:
            raise RecordTooNew(before.job_id, before.format_version)
        kind, write, written = self._change(before, after, fence)
        if fence is not None and kind == "Update" and goes_alone(before, after):
            return await self._calls.run(
                lambda: self._write_in_term(fence, write, before.job_id, written))
        if fence is None:
            def write_alone() -> bool:
                operation = self._client.put_item if kind == "Put" else self._client.update_item
                try:
                    operation(**write)
                except ClientError as exc:
                    if _conditional_failure(exc):
                        return _refused(before.job_id, exc.response.get("Item"), written)
                    raise
                return True

            return await self._calls.run(write_alone)

        def outcome(reasons: list[dict[str, Any]] | None) -> bool:
            if reasons is None:
                return True
            return _refused(before.job_id, reasons[0].get("Item"), written)

        landed = await self._fenced.write(fence, [{kind: write}],
                                          frozenset([before.job_id]), outcome, before.job_id)
        return bool(landed)

    def _write_in_term(self, fence: Fence, write: dict[str, Any], job_id: str,
                       written: Written) -> bool:
        """A hand-over or a report, written alone: only while this replica's lease holds by
        its own clock, and only on an item no later term has written (Deposed otherwise)."""
        if fence.epoch <= 0 or not fence.holds():
            raise Deposed(fence)  # a follower's, or one whose lease lapsed: nothing sent
        try:
            self._client.update_item(**write)
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise
            item = exc.response.get("Item")
            if _refused(job_id, item, written):
                return True  # this very write, landed by an attempt whose answer was lost
            if _term_of(item) > fence.epoch:
                raise Deposed(fence) from None
            return False
        return True

    def _change(self, before: JobRecord, after: JobRecord,
                fence: Fence | None = None) -> tuple[str, dict[str, Any], Written]:
        """The one conditional write of a transition: an Update of the attributes that differ,
        or, for a record in the original's form, a Put of the whole item in this one's; and
        what it writes. A fenced write carries its term's epoch, and one that goes out
        alone lands only on an item of that term or an earlier one."""
        names = {"#status": "status", "#format": "format_version"}
        values: dict[str, Any] = {":expected": {"S": before.status.value},
                                  ":format": {"N": str(RECORD_FORMAT)}}
        expected = ("#status = :expected AND "
                    "(attribute_not_exists(#format) OR #format <= :format)")
        if fence is not None and goes_alone(before, after):
            names["#term"] = TERM
            values[":term"] = {"N": str(fence.epoch)}
            expected += " AND (attribute_not_exists(#term) OR #term <= :term)"
        condition = {
            "TableName": self._table,
            "ConditionExpression": expected,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if before.format_version == ORIGINAL_FORMAT:
            item = self._item(after)
            if fence is not None:
                item[TERM] = {"N": str(fence.epoch)}
            return "Put", {**condition, "Item": item}, (self._row(after), [])
        to_set, to_remove = codec.changes(self._row(before), self._row(after))
        to_set["status"] = after.status.value  # an update sets something, even a retag to the same
        if fence is not None:
            to_set[TERM] = fence.epoch
        sets = []
        for i, (name, value) in enumerate(to_set.items()):
            names[f"#s{i}"], values[f":s{i}"] = name, _serializer.serialize(value)
            sets.append(f"#s{i} = :s{i}")
        expression = "SET " + ", ".join(sets)
        if to_remove:
            names.update({f"#r{i}": name for i, name in enumerate(to_remove)})
            expression += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(to_remove)))
        return "Update", {**condition, "Key": {"job_id": {"S": after.job_id}},
                          "UpdateExpression": expression,
                          "ExpressionAttributeNames": names, "ExpressionAttributeValues": values
                          }, (to_set, to_remove)

    async def list_by_status(self, status: JobStatus) -> AsyncIterator[JobRecord]:
        async for item in self._items(self._client.query, self._status_query(status)):
            try:
                yield self._record(item)
            except RecordUnreadable:
                continue  # reported; the others are served

    async def list_queued(self) -> AsyncIterator[JobRecord | QueuedRow]:
        """Every QUEUED record; one of this scheduler's that a fresh submission made as a
        QueuedRow, no JobRecord built for it (docs/design.md, "A queued job in memory")."""
        query = self._status_query(JobStatus.QUEUED)
        async for item in self._items(self._client.query, query):
            try:
                yield self._lean(item) or self._record(item)
            except RecordUnreadable:
                continue  # reported; the others are served

    def _status_query(self, status: JobStatus) -> dict[str, Any]:
        return {
            "TableName": self._table,
            "IndexName": self._status_index,
            "KeyConditionExpression": "#status = :status",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":status": {"S": status.value}},
        }

    @staticmethod
    def _lean(item: dict[str, Any]) -> QueuedRow | None:
        """The item as a QueuedRow, or None: an original's record, one with more than a
        fresh submission's, or one that is no record (then _record says why)."""
        try:
            values = {name: _deserializer.deserialize(v) for name, v in item.items()
                      if name not in (MONTH, TERM)}  # the store's own, beside the record's
            return None if is_original(values) else codec.decode_lean(values)
        except (KeyError, ValueError, TypeError, ArithmeticError, AttributeError):
            return None

    async def list_newest_first(self, owner_fingerprint: str | None, since: datetime,
                                until: datetime, batch: int = 0
                                ) -> AsyncIterator[JobRecord | Reached]:
        if owner_fingerprint is None:
            index, found = TIME_INDEX, self._every_owners(since, until, batch)
        else:
            index, found = OWNER_INDEX, self._owners(owner_fingerprint, since, until, batch)
        try:
            async for item in found:
                if isinstance(item, Reached):
                    yield item
                    continue
                try:
                    yield self._record(item)
                except RecordUnreadable:
                    continue  # reported; the others are served
        except StoreError as exc:
            if "index" in str(exc).lower() and index in str(exc):
                raise IndexMissing(index) from None
            raise

    def _owners(self, owner: str, since: datetime, until: datetime,
                batch: int) -> AsyncIterator[dict[str, Any]]:
        """One owner's items of the period, newest first, ``batch`` per request."""
        query = {"TableName": self._table, "IndexName": OWNER_INDEX,
                 "KeyConditionExpression":
                     "owner_fingerprint = :owner AND submitted_at BETWEEN :since AND :until",
                 "ExpressionAttributeValues": {**_bounds(since, until),
                                               ":owner": {"S": owner}},
                 "ScanIndexForward": False, **_limit(batch)}
        return self._items(self._client.query, query)

    async def _every_owners(self, since: datetime, until: datetime,
                            batch: int) -> AsyncIterator[dict[str, Any] | Reached]:
        """Every owner's items of the period, newest first: month by month down
        submitted-index from the month of ``until`` to that of ``since``, ``batch`` per
        request, with a mark after each month but the last (a reader stops at one when
        the months walked held little: listing.py)."""
        month, last = _month(until), _month(since)
        while True:
            query = {"TableName": self._table, "IndexName": TIME_INDEX,
                     "KeyConditionExpression":
                         "#month = :month AND submitted_at BETWEEN :since AND :until",
                     "ExpressionAttributeNames": {"#month": MONTH},
                     "ExpressionAttributeValues": {**_bounds(since, until),
                                                   ":month": {"S": month}},
                     "ScanIndexForward": False, **_limit(batch)}
            async for item in self._items(self._client.query, query):
                yield item
            if month <= last:
                return
            yield Reached(_month_start(month))
            month = _month_before(month)

    async def add_listing_indexes(self) -> list[str]:
        """Add the listings' indexes the table lacks (the original's table lacks both);
        the names of those added. DynamoDB creates one index per request and takes the
        next once the table is ACTIVE again, so each waits for that; it builds them in
        the background, and listings work once they are ACTIVE."""
        added = []
        for definition in (_owner_index_definition(), _time_index_definition()):
            description = await self._calls.run(
                lambda: self._client.describe_table(TableName=self._table))
            indexes = description["Table"].get("GlobalSecondaryIndexes", [])
            if any(index.get("IndexName") == definition["IndexName"] for index in indexes):
                continue
            keys = [key["AttributeName"] for key in definition["KeySchema"]]
            await self._calls.run(functools.partial(
                self._client.update_table, TableName=self._table,
                AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}
                                      for key in keys],
                GlobalSecondaryIndexUpdates=[{"Create": definition}]))
            await self._calls.run(lambda: self._client.get_waiter("table_exists").wait(
                TableName=self._table))
            added.append(definition["IndexName"])
        return added

    async def mark_months(self) -> int:
        """Give each record of this scheduler that lacks its month (one written by a
        release before it, or by one during a rolling upgrade) the month, so that
        every owner's listing finds it; how many. Safe to run again and beside serving
        replicas: the update sets that attribute alone, only where it is missing."""
        scan = {"TableName": self._table, "ProjectionExpression": "job_id, submitted_at",
                "FilterExpression": "attribute_exists(owner_fingerprint) AND "
                                    "attribute_exists(submitted_at) AND "
                                    "attribute_not_exists(#month)",
                "ExpressionAttributeNames": {"#month": MONTH}}
        marked = 0
        async for item in self._items(self._client.scan, scan):
            if await self._mark_month(item):
                marked += 1
        return marked

    async def _mark_month(self, item: dict[str, Any]) -> bool:
        try:
            month = _month(datetime.fromisoformat(item["submitted_at"]["S"]))
        except (KeyError, ValueError, TypeError):
            return False  # not a time: the record is reported unreadable where it is read

        def update() -> bool:
            try:
                self._client.update_item(
                    TableName=self._table, Key={"job_id": item["job_id"]},
                    UpdateExpression="SET #month = :month",
                    ConditionExpression="attribute_exists(job_id) AND "
                                        "attribute_not_exists(#month)",
                    ExpressionAttributeNames={"#month": MONTH},
                    ExpressionAttributeValues={":month": {"S": month}})
            except ClientError as exc:
                if _conditional_failure(exc):
                    return False  # marked or gone meanwhile
                raise
            return True

        return await self._calls.run(update)

    async def _items(self, operation: Any, request: dict[str, Any]
                     ) -> AsyncIterator[dict[str, Any]]:
        """Every item a Query or Scan finds, fetched page by page."""
        start: dict[str, Any] | None = None
        while True:
            page_request = {**request, "ExclusiveStartKey": start} if start else request
            page = await self._calls.run(functools.partial(operation, **page_request))
            for item in page.get("Items", []):
                yield item
            start = page.get("LastEvaluatedKey")
            if not start:
                return

    async def find_by_idempotency_key(self, owner_fingerprint: str, key: str) -> JobRecord | None:
        answer = await self._calls.run(
            lambda: self._client.get_item(
                TableName=self._table,
                Key={"job_id": {"S": claim_key(owner_fingerprint, key)}},
                ConsistentRead=True,
            )
        )
        claim = answer.get("Item")
        return await self.get(claim["claimed_job_id"]["S"]) if claim else None

    async def read_document(self, name: str) -> Document | None:
        answer = await self._calls.run(
            lambda: self._client.get_item(
                TableName=self._table, Key={"job_id": {"S": DOCUMENT_PREFIX + name}},
                ConsistentRead=True))
        item = answer.get("Item")
        if not item:
            return None
        return Document(bytes(item["document"]["B"]), int(item["document_version"]["N"]))

    async def write_document(self, name: str, body: bytes, version: int,
                             fence: Fence | None = None) -> bool:
        key = DOCUMENT_PREFIX + name
        item = {"job_id": {"S": key}, "document": {"B": body},
                "document_version": {"N": str(version + 1)}}
        condition, values = (("attribute_not_exists(job_id)", {}) if version == 0 else
                             ("document_version = :version", {":version": {"N": str(version)}}))
        if fence is None:
            return await self._put_if(item, condition, {}, values)
        write = {"TableName": self._table, "Item": item, "ConditionExpression": condition,
                 **({"ExpressionAttributeValues": values} if values else {})}
        landed = await self._fenced.write(fence, [{"Put": write}], frozenset([key]),
                                          lambda reasons: reasons is None, key)
        return bool(landed)

    async def close(self) -> None:
        await self._fenced.drain()
        self._calls.close()

    # --- taking over from the original, and the way back (docs/migrating.md) -------------
    async def scrub_original_records(self) -> Scrubbed:
        """Rewrite every record the original wrote in this scheduler's form, without its token.

        Each rewrite is conditional on the item being as it was read, so a record the
        scheduler changed meanwhile is left to that change; running it again is safe.
        """
        scrubbed = Scrubbed()
        scan = {"TableName": self._table, "ConsistentRead": True}
        async for item in self._items(self._client.scan, scan):
            values = {name: _deserializer.deserialize(v) for name, v in item.items()}
            if not is_original(values):
                continue
            try:
                record = self._record(item)
            except RecordUnreadable:
                scrubbed.count(unreadable=True)
                continue
            rewritten = await self._put_if(
                self._item(record),
                "attribute_exists(#token) AND #status = :status",
                {"#token": "token", "#status": "status"},
                {":status": item["status"]},
            )
            scrubbed.count(rewritten=rewritten)
        return scrubbed

    async def export_queued_to_original(self, token_of: Callable[[JobRecord], str],
                                        expiry: timedelta = FINISHED_JOB_RETENTION) -> int:
        """Write each of this scheduler's QUEUED jobs as the original's record; how many.

        A record of a newer format is left as it is (docs/records.md)."""
        exported = 0
        async for record in self.list_by_status(JobStatus.QUEUED):
            try:
                original = encode_original(record, token_of(record), record.submitted_at + expiry)
            except ValueError as exc:  # a value the original's form cannot hold
                log.warning("job %s stays in this scheduler's form: %s", record.job_id, exc)
                continue
            item = {name: _serializer.serialize(value) for name, value in original.items()}
            if await self._put_if(
                item,
                "#status = :queued AND attribute_exists(owner_fingerprint) AND "
                "(attribute_not_exists(#format) OR #format <= :format)",
                {"#status": "status", "#format": "format_version"},
                {":queued": {"S": JobStatus.QUEUED.value}, ":format": {"N": str(RECORD_FORMAT)}},
            ):
                exported += 1
        return exported

    async def _put_if(self, item: dict[str, Any], condition: str, names: dict[str, str],
                      values: dict[str, Any]) -> bool:
        # DynamoDB refuses empty maps of names or values: each is sent only when it has some.
        optional = {**({"ExpressionAttributeNames": names} if names else {}),
                    **({"ExpressionAttributeValues": values} if values else {})}

        def put() -> bool:
            try:
                self._client.put_item(TableName=self._table, Item=item,
                                      ConditionExpression=condition, **optional)
            except ClientError as exc:
                if _conditional_failure(exc):
                    return False
                raise
            return True

        return await self._calls.run(put)


@dataclass
class Scrubbed:
    """What a pass over the original's records did."""

    rewritten: int = 0
    unreadable: int = 0  # left as they are, and logged
    changed_meanwhile: int = 0  # the scheduler wrote them first: already scrubbed

    def count(self, *, rewritten: bool = False, unreadable: bool = False) -> None:
        """One record more: rewritten, unreadable, or (neither) changed meanwhile."""
        if unreadable:
            self.unreadable += 1
        elif rewritten:
            self.rewritten += 1
        else:
            self.changed_meanwhile += 1


def missing_from_table(description: dict[str, Any], status_index: str) -> str | None:
    """What the table (as DescribeTable tells it) lacks that this store needs, or None."""
    table = description.get("Table", {})
    if [k.get("AttributeName") for k in table.get("KeySchema", [])] != ["job_id"]:
        return "a partition key named job_id (and no sort key)"
    for index in table.get("GlobalSecondaryIndexes", []):
        if index.get("IndexName") == status_index:
            keys = [k.get("AttributeName") for k in index.get("KeySchema", [])]
            projection = index.get("Projection", {}).get("ProjectionType")
            if keys[:1] != ["status"] or projection != "ALL":
                return (f"global secondary index {status_index!r} keyed on status with all "
                        f"attributes projected (it is keyed on {keys}, projects {projection})")
            return None
    return f"global secondary index {status_index!r} on status"


def _sortable(moment: datetime) -> str:
    """A time as records hold submitted_at (codec.py): UTC ISO text with microseconds."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _bounds(since: datetime, until: datetime) -> dict[str, Any]:
    return {":since": {"S": _sortable(since)}, ":until": {"S": _sortable(until)}}


def _limit(batch: int) -> dict[str, Any]:
    return {"Limit": batch} if batch else {}


def _month(moment: datetime) -> str:
    """The month (UTC) a record submitted then is listed under: ``YYYY-MM``, which sorts
    as time."""
    utc = moment.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def _month_start(month: str) -> datetime:
    year, number = month.split("-")
    return datetime(int(year), int(number), 1, tzinfo=UTC)


def _month_before(month: str) -> str:
    start = _month_start(month)
    return _month(start - timedelta(days=1))


def _owner_index_definition() -> dict[str, Any]:
    return {
        "IndexName": OWNER_INDEX,
        "KeySchema": [{"AttributeName": "owner_fingerprint", "KeyType": "HASH"},
                      {"AttributeName": "submitted_at", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "ALL"},
    }


def _time_index_definition() -> dict[str, Any]:
    return {
        "IndexName": TIME_INDEX,
        "KeySchema": [{"AttributeName": MONTH, "KeyType": "HASH"},
                      {"AttributeName": "submitted_at", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "ALL"},
    }


def create_table(client: Any, table_name: str, owner_index: bool = True) -> None:
    """Create the jobs table as production has it (for development and tests); without
    ``owner_index``, as the original deployment has it (neither listing index)."""
    attributes = [{"AttributeName": "job_id", "AttributeType": "S"},
                  {"AttributeName": "status", "AttributeType": "S"}]
    indexes: list[dict[str, Any]] = [{
        "IndexName": STATUS_INDEX,
        "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}],
        "Projection": {"ProjectionType": "ALL"},
    }]
    if owner_index:
        attributes += [{"AttributeName": "owner_fingerprint", "AttributeType": "S"},
                       {"AttributeName": "submitted_at", "AttributeType": "S"},
                       {"AttributeName": MONTH, "AttributeType": "S"}]
        indexes += [_owner_index_definition(), _time_index_definition()]
    client.create_table(
        TableName=table_name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=attributes,
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=indexes,
    )
    client.get_waiter("table_exists").wait(TableName=table_name)
    client.update_time_to_live(
        TableName=table_name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "job_expiry"},
    )

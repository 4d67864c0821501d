"""JobStore on DynamoDB: production's record of every job.

Table: partition key ``job_id``; GSI ``status-index`` on ``status`` (all attributes
projected) for recovery; sparse GSI ``idempotency-index`` on ``idempotency_ref`` for
retried submissions; TTL attribute ``job_expiry`` (epoch seconds) on final records.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any, AsyncIterator

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from job_manager.model import JobRecord, JobStatus
from job_manager.stores import codec
from job_manager.stores.blocking import BlockingCalls
from job_manager.stores.errors import StoreError

STATUS_INDEX = "status-index"
IDEMPOTENCY_INDEX = "idempotency-index"
FINISHED_JOB_RETENTION = timedelta(days=30)

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class DynamoDbJobStore:
    """Records as DynamoDB items; each status change is one conditional put."""

    def __init__(
        self,
        client: Any,
        table_name: str,
        max_workers: int = 16,
        retention: timedelta = FINISHED_JOB_RETENTION,
    ) -> None:
        self._client = client
        self._table = table_name
        self._retention = retention
        self._calls = BlockingCalls("dynamodb-jobs", max_workers, (ClientError, BotoCoreError))

    def _item(self, record: JobRecord) -> dict[str, Any]:
        row: dict[str, Any] = dict(codec.encode(record))
        if record.idempotency_key:
            row["idempotency_ref"] = f"{record.owner_fingerprint}:{record.idempotency_key}"
        if record.status.is_final and record.finished_at is not None:
            row["job_expiry"] = int((record.finished_at + self._retention).timestamp())
        return {name: _serializer.serialize(value) for name, value in row.items()}

    @staticmethod
    def _record(item: dict[str, Any]) -> JobRecord:
        return codec.decode({name: _deserializer.deserialize(v) for name, v in item.items()})

    async def create(self, record: JobRecord) -> None:
        def put() -> None:
            try:
                self._client.put_item(
                    TableName=self._table,
                    Item=self._item(record),
                    ConditionExpression="attribute_not_exists(job_id)",
                )
            except ClientError as exc:
                if _conditional_failure(exc):
                    raise StoreError(f"job {record.job_id} already exists") from None
                raise

        await self._calls.run(put)

    async def get(self, job_id: str) -> JobRecord | None:
        answer = await self._calls.run(
            lambda: self._client.get_item(
                TableName=self._table, Key={"job_id": {"S": job_id}}, ConsistentRead=True
            )
        )
        item = answer.get("Item")
        return self._record(item) if item else None

    async def transition(self, record: JobRecord, expected: JobStatus) -> bool:
        def put() -> bool:
            try:
                self._client.put_item(
                    TableName=self._table,
                    Item=self._item(record),
                    ConditionExpression="#status = :expected",
                    ExpressionAttributeNames={"#status": "status"},
                    ExpressionAttributeValues={":expected": {"S": expected.value}},
                )
            except ClientError as exc:
                if _conditional_failure(exc):
                    return False
                raise
            return True

        return await self._calls.run(put)

    async def list_by_status(self, status: JobStatus) -> AsyncIterator[JobRecord]:
        start: dict[str, Any] | None = None
        while True:
            query: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": STATUS_INDEX,
                "KeyConditionExpression": "#status = :status",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {":status": {"S": status.value}},
            }
            if start:
                query["ExclusiveStartKey"] = start
            page = await self._calls.run(functools.partial(self._client.query, **query))
            for item in page.get("Items", []):
                yield self._record(item)
            start = page.get("LastEvaluatedKey")
            if not start:
                return

    async def find_by_idempotency_key(self, owner_fingerprint: str, key: str) -> JobRecord | None:
        answer = await self._calls.run(
            lambda: self._client.query(
                TableName=self._table,
                IndexName=IDEMPOTENCY_INDEX,
                KeyConditionExpression="idempotency_ref = :ref",
                ExpressionAttributeValues={":ref": {"S": f"{owner_fingerprint}:{key}"}},
            )
        )
        records = [self._record(item) for item in answer.get("Items", [])]
        return max(records, key=lambda r: r.submitted_at, default=None)

    async def close(self) -> None:
        self._calls.close()


def create_table(client: Any, table_name: str) -> None:
    """Create the jobs table as production has it (for development and tests)."""
    client.create_table(
        TableName=table_name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "job_id", "AttributeType": "S"},
            {"AttributeName": "status", "AttributeType": "S"},
            {"AttributeName": "idempotency_ref", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": STATUS_INDEX,
                "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            },
            {
                "IndexName": IDEMPOTENCY_INDEX,
                "KeySchema": [{"AttributeName": "idempotency_ref", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            },
        ],
    )
    client.get_waiter("table_exists").wait(TableName=table_name)
    client.update_time_to_live(
        TableName=table_name,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "job_expiry"},
    )

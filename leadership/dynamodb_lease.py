"""The lease's record as one item of the jobs table (docs/replicas.md).

The item's key is ``scheduler-lease``: never a job id (a UUID), never an idempotency
claim. It has no ``status`` (the status index never sees it) and no ``job_expiry`` (the
table's TTL never removes it). Job writes that must be fenced name this item in their
transaction's condition (job_manager/stores/dynamodb_job_store.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from leadership.lease import LeaseRecord, LeaseUnreachable

LEASE_KEY = "scheduler-lease"


class DynamoDbLeaseTable:
    """LeaseTable on the jobs table: conditional puts of one item."""

    def __init__(self, client: Any, table_name: str, key: str = LEASE_KEY) -> None:
        self._client = client
        self._table = table_name
        self._key = key

    async def read(self) -> LeaseRecord | None:
        answer = await self._call(self._client.get_item, TableName=self._table,
                                  Key={"job_id": {"S": self._key}}, ConsistentRead=True)
        item = answer.get("Item")
        if item is None:
            return None
        return LeaseRecord(
            holder=item["holder"]["S"],
            epoch=int(item["epoch"]["N"]),
            version=item["version"]["S"],
            submission_address=item.get("submission_address", {}).get("S", ""),
            execution_address=item.get("execution_address", {}).get("S", ""),
            released=item.get("released", {}).get("BOOL", False),
        )

    async def create(self, record: LeaseRecord) -> bool:
        return await self._put_if(record, "attribute_not_exists(job_id)", {})

    async def replace(self, record: LeaseRecord, expected_version: str) -> bool:
        return await self._put_if(record, "version = :expected",
                                  {":expected": {"S": expected_version}})

    async def _put_if(self, record: LeaseRecord, condition: str,
                      values: dict[str, Any]) -> bool:
        item = {
            "job_id": {"S": self._key},
            "holder": {"S": record.holder},
            "epoch": {"N": str(record.epoch)},
            "version": {"S": record.version},
            "submission_address": {"S": record.submission_address},
            "execution_address": {"S": record.execution_address},
            "released": {"BOOL": record.released},
        }
        request: dict[str, Any] = {"TableName": self._table, "Item": item,
                                   "ConditionExpression": condition}
        if values:
            request["ExpressionAttributeValues"] = values
        try:
            await self._call(self._client.put_item, **request)
        except _ConditionFailed:
            return False
        return True

    async def _call(self, operation: Any, **request: Any) -> Any:
        def call() -> Any:
            try:
                return operation(**request)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                    raise _ConditionFailed from None
                raise

        try:
            return await asyncio.to_thread(call)
        except (ClientError, BotoCoreError) as exc:
            raise LeaseUnreachable(f"{type(exc).__name__}: {exc}") from None


class _ConditionFailed(Exception):
    """The write's condition did not hold: the lease is not as expected."""

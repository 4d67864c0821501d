"""The lease's record as one item of the jobs table (docs/replicas.md).

The item's key is ``scheduler-lease``: never a job id (a UUID), never an idempotency
claim. It has no ``status`` (the status index never sees it) and no ``job_expiry`` (the
table's TTL never removes it). No job write names it: job writes are fenced by the fence
items a new leader raises (job_manager/stores/fence.py), so a renewal never meets a job
transaction. A conflict all the same (a transaction of a release that fenced on this
item, during an upgrade) is retried up to twice within the call.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from leadership.lease import LeaseRecord, LeaseUnreachable

LEASE_KEY = "scheduler-lease"
_PUT_ATTEMPTS = 3
_CONFLICT_WAIT_S = (0.005, 0.02)


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
        return await self._put(request)

    async def _put(self, request: dict[str, Any]) -> bool:
        """The put, again a few milliseconds after a conflict, up to _PUT_ATTEMPTS
        conflicts in a row."""
        conflicts = 0
        while True:
            try:
                await self._call(self._client.put_item, **request)
                return True
            except _ConditionFailed:
                return False
            except _Conflict:
                pass  # the item was in a transaction: the put did not land
            conflicts += 1
            if conflicts == _PUT_ATTEMPTS:
                raise LeaseUnreachable(f"the lease item was in other transactions "
                                       f"{_PUT_ATTEMPTS} times in a row")
            await asyncio.sleep(random.uniform(*_CONFLICT_WAIT_S))

    async def _call(self, operation: Any, **request: Any) -> Any:
        def call() -> Any:
            try:
                return operation(**request)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code == "ConditionalCheckFailedException":
                    raise _ConditionFailed from None
                if code == "TransactionConflictException":
                    raise _Conflict from None
                raise

        try:
            return await asyncio.to_thread(call)
        except (ClientError, BotoCoreError) as exc:
            raise LeaseUnreachable(f"{type(exc).__name__}: {exc}") from None


class _ConditionFailed(Exception):
    """The write's condition did not hold: the lease is not as expected."""


class _Conflict(Exception):
    """The item was part of a transaction in flight: the write did not happen."""

"""Token records in a DynamoDB table keyed by ``fingerprint`` (AWS mode)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from token_database.store import TokenRecord


class DynamoDbTokenStore:
    """The same records as the SQLite store, one item each; never the raw token."""

    def __init__(self, client: Any, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def put(self, record: TokenRecord) -> None:
        item = {
            "fingerprint": {"S": record.fingerprint},
            "name": {"S": record.name},
            "role": {"S": record.role},
            "created_at": {"S": record.created_at.isoformat()},
        }
        if record.expires_at is not None:
            item["expires_at"] = {"S": record.expires_at.isoformat()}
        self._client.put_item(TableName=self._table, Item=item)

    def get(self, key: str) -> TokenRecord | None:
        answer = self._client.get_item(TableName=self._table, Key={"fingerprint": {"S": key}},
                                       ConsistentRead=True)
        item = answer.get("Item")
        return self._record(item) if item else None

    def delete(self, key: str) -> bool:
        answer = self._client.delete_item(TableName=self._table,
                                          Key={"fingerprint": {"S": key}},
                                          ReturnValues="ALL_OLD")
        return "Attributes" in answer

    def list(self) -> list[TokenRecord]:
        records: list[TokenRecord] = []
        for page in self._client.get_paginator("scan").paginate(TableName=self._table):
            records.extend(self._record(item) for item in page.get("Items", []))
        return sorted(records, key=lambda r: r.created_at)

    @staticmethod
    def _record(item: dict[str, Any]) -> TokenRecord:
        expires = item.get("expires_at", {}).get("S")
        return TokenRecord(
            fingerprint=item["fingerprint"]["S"],
            name=item["name"]["S"],
            role=item["role"]["S"],
            created_at=datetime.fromisoformat(item["created_at"]["S"]),
            expires_at=datetime.fromisoformat(expires) if expires else None,
        )


def create_token_table(client: Any, table_name: str) -> None:
    """Create the tokens table (for development and tests)."""
    client.create_table(
        TableName=table_name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "fingerprint", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "fingerprint", "KeyType": "HASH"}],
    )
    client.get_waiter("table_exists").wait(TableName=table_name)

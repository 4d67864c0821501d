"""The emulator the tests and benchmarks run on (docs/emulators.md): moto's transactions
without the whole-table copy keep DynamoDB's all-or-nothing promise, and the model refuses,
throttles, delays and counts as DynamoDB does."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto.dynamodb.models.table import Table

from emulators.dynamodb_model import DYNAMODB, ModelledAws
from emulators.server import EmulatorServer
from job_manager.stores.dynamodb_job_store import create_table
from tests.helpers import aws_client

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


def _table(endpoint: str) -> tuple[Any, str]:
    client = aws_client("dynamodb", endpoint)
    name = f"emulator-{uuid.uuid4().hex[:12]}"
    create_table(client, name)
    return client, name


def _item(job_id: str, **values: str) -> dict[str, Any]:
    return {"job_id": {"S": job_id}, **{k: {"S": v} for k, v in values.items()}}


def _put(table: str, job_id: str, **values: str) -> dict[str, Any]:
    return {"Put": {"TableName": table, "Item": _item(job_id, **values)}}


def _everything(client: Any, table: str) -> list[dict[str, Any]]:
    items = client.scan(TableName=table)["Items"]
    return sorted(items, key=lambda item: item["job_id"]["S"])


# --- all or nothing, on both -----------------------------------------------------------------
@pytest.mark.parametrize("failing_at", [0, 2, 4])
def test_a_cancelled_transaction_changes_nothing(dynamodb_endpoint: str, failing_at: int) -> None:
    client, table = _table(dynamodb_endpoint)
    for i in range(5):
        client.put_item(TableName=table, Item=_item(f"j{i}", state="before"))
    before = _everything(client, table)
    actions: list[dict[str, Any]] = []
    for i in range(5):
        condition = ("attribute_not_exists(job_id)" if i == failing_at
                     else "attribute_exists(job_id)")
        actions.append({"Update": {
            "TableName": table, "Key": {"job_id": {"S": f"j{i}"}},
            "UpdateExpression": "SET #s = :after", "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#s": "state"},
            "ExpressionAttributeValues": {":after": {"S": "after"}}}})
    actions.append(_put(table, "new", state="after"))
    with pytest.raises(ClientError) as refused:
        client.transact_write_items(TransactItems=actions)
    reasons = [r["Code"] for r in refused.value.response["CancellationReasons"]]
    assert reasons == ["ConditionalCheckFailed" if i == failing_at else "None"
                       for i in range(6)]
    assert _everything(client, table) == before


def test_a_transaction_that_holds_lands_whole(dynamodb_endpoint: str) -> None:
    client, table = _table(dynamodb_endpoint)
    client.put_item(TableName=table, Item=_item("fence", holder="a"))
    client.transact_write_items(TransactItems=[
        {"ConditionCheck": {"TableName": table, "Key": {"job_id": {"S": "fence"}},
                            "ConditionExpression": "holder = :a",
                            "ExpressionAttributeValues": {":a": {"S": "a"}}}},
        _put(table, "j1", state="new"), _put(table, "j2", state="new")])
    assert [item["job_id"]["S"] for item in _everything(client, table)] == ["fence", "j1", "j2"]


def test_a_write_that_fails_after_others_puts_them_back(moto_endpoint: str) -> None:
    """An action whose condition held but whose write fails (here: an update adding to a
    string) undoes the writes made before it in the transaction."""
    client, table = _table(moto_endpoint)
    client.put_item(TableName=table, Item=_item("j0", state="before"))
    before = _everything(client, table)
    with pytest.raises(ClientError):
        client.transact_write_items(TransactItems=[
            _put(table, "j1", state="new"),
            {"Update": {"TableName": table, "Key": {"job_id": {"S": "j0"}},
                        "UpdateExpression": "ADD #s :one",
                        "ExpressionAttributeNames": {"#s": "state"},
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}}])
    assert _everything(client, table) == before


def test_the_emulator_copies_no_table_for_a_transaction(
        moto_endpoint: str, plain_moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    copied: list[str] = []
    real_deepcopy = copy.deepcopy

    def counting(value: Any, *args: Any) -> Any:
        if isinstance(value, Table):
            copied.append(value.name)
        return real_deepcopy(value, *args)

    monkeypatch.setattr(copy, "deepcopy", counting)
    for endpoint in (moto_endpoint, plain_moto_endpoint):
        client, table = _table(endpoint)
        client.transact_write_items(TransactItems=[_put(table, f"j{i}") for i in range(3)])
    # moto as it comes copies the table once per action; the emulator's moto never
    assert len(copied) == 3


def test_writes_beside_transactions_never_fail_the_emulator(moto_endpoint: str) -> None:
    """moto as it comes answers HTTP 500 ("dictionary changed size during iteration") when
    a write lands while a transaction copies the table; the emulator's moto has no copy."""
    client, table = _table(moto_endpoint)
    failures: list[str] = []

    def transactions(worker: int) -> None:
        for i in range(40):
            try:
                client.transact_write_items(TransactItems=[
                    _put(table, f"t{worker}-{i}-{k}") for k in range(4)])
            except ClientError as exc:
                failures.append(str(exc))

    def writes(worker: int) -> None:
        for i in range(160):
            try:
                client.put_item(TableName=table, Item=_item(f"w{worker}-{i}"))
            except ClientError as exc:
                failures.append(str(exc))

    threads = [threading.Thread(target=f, args=(n,)) for n in range(3)
               for f in (transactions, writes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(_everything(client, table)) == 3 * (40 * 4 + 160)


# --- the model ---------------------------------------------------------------------------------
class _HeldApp:
    """A stand-in for moto that holds a request until told to let it go."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()
        self.hold_next = False

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if self.hold_next:
            self.hold_next = False
            self.entered.set()
            self.release.wait(10)
        return self.inner(environ, start_response)


@pytest.fixture
def modelled() -> Iterator[tuple[EmulatorServer, ModelledAws, _HeldApp, list[float]]]:
    """An emulator behind the model, whose moto can be held mid-request, and whose sleeps
    are recorded instead of slept."""
    server = EmulatorServer(store_model="dynamodb", seed=7)
    model: ModelledAws = server.app
    held = _HeldApp(model._app)
    model._app = held
    slept: list[float] = []
    model._sleep = slept.append
    server.start()
    yield server, model, held, slept
    held.release.set()
    server.stop()


def _in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except ClientError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _fence_and(table: str, job_id: str) -> list[dict[str, Any]]:
    return [{"ConditionCheck": {"TableName": table, "Key": {"job_id": {"S": "fence"}},
                                "ConditionExpression": "attribute_exists(job_id)"}},
            _put(table, job_id)]


def test_two_transactions_on_one_item_conflict_and_a_write_on_it_is_refused(modelled) -> None:
    server, model, held, _ = modelled
    client, table = _table(server.endpoint)
    client.put_item(TableName=table, Item=_item("fence"))
    held.hold_next = True
    first, outcome = _in_thread(lambda: client.transact_write_items(
        TransactItems=_fence_and(table, "j1")))
    assert held.entered.wait(10)

    with pytest.raises(ClientError) as cancelled:
        aws_client("dynamodb", server.endpoint, retries=1).transact_write_items(
            TransactItems=[_put(table, "j9"), *_fence_and(table, "j2")])
    assert cancelled.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in cancelled.value.response["CancellationReasons"]] == [
        "None", "TransactionConflict", "None"]
    with pytest.raises(ClientError) as refused:
        aws_client("dynamodb", server.endpoint, retries=1).put_item(
            TableName=table, Item=_item("fence", holder="b"))
    assert refused.value.response["Error"]["Code"] == "TransactionConflictException"
    # A read sees the last committed item meanwhile.
    assert "holder" not in client.get_item(TableName=table,
                                           Key={"job_id": {"S": "fence"}})["Item"]

    held.release.set()
    first.join()
    assert not isinstance(outcome[0], ClientError)
    assert {i["job_id"]["S"] for i in _everything(client, table)} == {"fence", "j1"}
    # Once the first is over, the item is free again.
    client.transact_write_items(TransactItems=_fence_and(table, "j2"))
    assert model.usage.conflicts == {"TransactWriteItems": 1, "PutItem": 1}


def test_a_hot_partition_is_throttled(modelled) -> None:
    server, model, _, _ = modelled
    model.model = dataclasses.replace(DYNAMODB, partitions=1, partition_write_units=3.0)
    model._partition_writes.clear()
    client, table = _table(server.endpoint)
    once = aws_client("dynamodb", server.endpoint, retries=1)
    for i in range(3):
        once.put_item(TableName=table, Item=_item(f"j{i}"))
    with pytest.raises(ClientError) as throttled:
        once.put_item(TableName=table, Item=_item("j3"))
    assert throttled.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    assert model.usage.throttled == {"PutItem": 1}
    assert len(_everything(client, table)) == 3


def test_each_call_is_given_its_operations_time(modelled) -> None:
    server, _, _, slept = modelled
    client, table = _table(server.endpoint)
    draws: dict[str, list[float]] = {}
    for operation, call in [
            ("GetItem", lambda: client.get_item(TableName=table, Key={"job_id": {"S": "x"}})),
            ("PutItem", lambda: client.put_item(TableName=table, Item=_item("x"))),
            ("TransactWriteItems", lambda: client.transact_write_items(
                TransactItems=[_put(table, f"t{k}") for k in range(10)]))]:
        draws[operation] = []
        for _ in range(30):
            slept.clear()
            call()
            draws[operation].append(slept[0] * 2)  # the first half, before moto's work
    medians = {name: sorted(values)[15] * 1000 for name, values in draws.items()}
    assert 2.0 < medians["GetItem"] < 4.5
    assert 3.5 < medians["PutItem"] < 7.0
    assert 8.0 < medians["TransactWriteItems"] < 17.0


def test_the_units_are_counted_as_dynamodb_charges_them(modelled) -> None:
    server, _, _, _ = modelled
    client, table = _table(server.endpoint)
    reset = urllib.request.Request(f"{server.endpoint}/emulator/usage/reset", method="POST")
    urllib.request.urlopen(reset).read()
    client.put_item(TableName=table, Item=_item("big", blob="x" * 1500))  # 2 KB: 2 units
    client.transact_write_items(TransactItems=[_put(table, "small")])  # transactional: 2
    client.get_item(TableName=table, Key={"job_id": {"S": "big"}})  # eventually consistent: 0.5
    client.get_item(TableName=table, Key={"job_id": {"S": "big"}}, ConsistentRead=True)  # 1
    usage = json.loads(urllib.request.urlopen(f"{server.endpoint}/emulator/usage").read())
    assert usage["write_units"] == 4.0
    assert usage["read_units"] == 1.5
    assert usage["requests"] == {"dynamodb.PutItem": 1, "dynamodb.TransactWriteItems": 1,
                                 "dynamodb.GetItem": 2}

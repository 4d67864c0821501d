"""DynamoDB's costs in front of moto: time per call, transaction conflicts, throttling and
the capacity units each call consumes (docs/emulators.md says where each figure comes from).

A WSGI middleware around moto's server application. Each AWS request is classified by its
service and operation, then:

- **Throttled** when its partition or its table has spent its capacity for the second
  (token buckets: 1,000 write and 3,000 read units a second per partition, 40,000 per
  table, as DynamoDB's on-demand tables; 40 GetParameter a second for SSM's standard
  throughput). DynamoDB answers ``ProvisionedThroughputExceededException``, SSM
  ``ThrottlingException``; botocore retries both.
- **Refused for a conflict** as DynamoDB refuses it: a transaction naming an item that
  another transaction, or a single write, is working on is cancelled with the reason
  ``TransactionConflict`` at that action; a PutItem, UpdateItem or DeleteItem on an item
  a transaction is working on is refused with ``TransactionConflictException``. Reads are
  never refused: they see the last committed item.
- **Delayed** by a time drawn around the operation's median (log-normal), half before
  moto applies it and half after, with the items it names held all the while: that
  window is what other calls can conflict with.
- **Counted**: requests per operation, and the read and write units DynamoDB would charge
  (a write 1 unit per KB of the larger of the item before and after, a transactional
  write 2; an eventually consistent read half a unit per 4 KB read, a strongly consistent
  one 1, a transactional 2). ``GET /emulator/usage`` answers the counts as JSON and
  ``POST /emulator/usage/reset`` starts them again.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

USAGE_PATH = "/emulator/usage"
_CREDENTIAL = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")
_DYNAMODB_PREFIX = "DynamoDB_20120810."
_SSM_PREFIX = "AmazonSSM."
_SINGLE_WRITES = {"PutItem", "UpdateItem", "DeleteItem"}
_DYNAMODB_ERROR = "com.amazonaws.dynamodb.v20120810#"


@dataclass(frozen=True)
class Model:
    """The figures of one model: medians in milliseconds, capacities per second."""

    name: str
    dynamodb_ms: dict[str, float]  # per operation; "*" for any other
    transaction_action_ms: float  # a transaction's time grows with its actions
    s3_ms: dict[str, float]  # per request kind: put, get, head, tagging, "*"
    s3_mb_per_s: float  # an object's bytes on top of a request's time
    ssm_ms: float
    spread: float  # sigma of the log-normal around each median
    partitions: int  # a table's partitions; an item's is its key's hash among them
    partition_write_units: float
    partition_read_units: float
    table_write_units: float
    table_read_units: float
    ssm_per_s: float

    def dynamodb_median_ms(self, operation: str, actions: int) -> float:
        base = self.dynamodb_ms.get(operation, self.dynamodb_ms["*"])
        return base + self.transaction_action_ms * actions

    def s3_median_ms(self, kind: str, body_bytes: int) -> float:
        base = self.s3_ms.get(kind, self.s3_ms["*"])
        return base + body_bytes / (self.s3_mb_per_s * 1000.0)


# Figures and their sources: docs/emulators.md, "The DynamoDB model".
DYNAMODB = Model(
    name="dynamodb",
    dynamodb_ms={"GetItem": 3.0, "PutItem": 5.0, "UpdateItem": 5.0, "DeleteItem": 5.0,
                 "Query": 6.0, "Scan": 10.0, "BatchGetItem": 6.0, "BatchWriteItem": 8.0,
                 "TransactWriteItems": 10.0, "TransactGetItems": 6.0, "*": 5.0},
    transaction_action_ms=0.2,
    s3_ms={"put": 20.0, "get": 12.0, "head": 8.0, "tagging": 12.0, "*": 12.0},
    s3_mb_per_s=100.0,
    ssm_ms=10.0,
    spread=0.35,
    partitions=4,
    partition_write_units=1000.0,
    partition_read_units=3000.0,
    table_write_units=40000.0,
    table_read_units=40000.0,
    ssm_per_s=40.0,
)
MODELS = {"dynamodb": DYNAMODB}


class _Bucket:
    """Capacity a second, refilled continuously; holds at most one second's worth."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self.level = per_s
        self.at = time.monotonic()

    def take(self, units: float, now: float) -> bool:
        self.level = min(self.per_s, self.level + (now - self.at) * self.per_s)
        self.at = now
        if units > self.level:
            return False
        self.level -= units
        return True


@dataclass
class Usage:
    """What the model counted since the last reset."""

    requests: Counter[str] = field(default_factory=Counter)
    write_units: float = 0.0
    read_units: float = 0.0
    throttled: Counter[str] = field(default_factory=Counter)
    conflicts: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return {"requests": dict(self.requests), "write_units": self.write_units,
                "read_units": self.read_units, "throttled": dict(self.throttled),
                "conflicts": dict(self.conflicts)}


@dataclass
class _Call:
    """One AWS request as the model reads it."""

    service: str  # dynamodb, s3, ssm, or other
    operation: str
    region: str
    body: bytes
    request: dict[str, Any] = field(default_factory=dict)  # DynamoDB and SSM: the JSON
    items: list[tuple[str, str]] = field(default_factory=list)  # (table, key) it names


class ModelledAws:
    """The WSGI middleware: ``ModelledAws(moto_app, DYNAMODB)``."""

    def __init__(self, app: WsgiApp, model: Model, seed: int | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._app = app
        self.model = model
        self._sleep = sleep
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._in_transactions: Counter[tuple[str, str]] = Counter()
        self._in_writes: Counter[tuple[str, str]] = Counter()
        self._partition_writes: dict[tuple[str, int], _Bucket] = {}
        self._partition_reads: dict[tuple[str, int], _Bucket] = {}
        self._table_writes: dict[str, _Bucket] = {}
        self._table_reads: dict[str, _Bucket] = {}
        self._ssm = _Bucket(model.ssm_per_s)
        self.usage = Usage()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(USAGE_PATH):
            return self._usage(environ, start_response)
        call = _read_call(environ)
        if call.service == "dynamodb":
            return self._dynamodb(call, environ, start_response)
        if call.service == "ssm":
            return self._ssm_call(call, environ, start_response)
        if call.service == "s3":
            kind = _s3_kind(environ)
            with self._lock:
                self.usage.requests[f"s3.{kind}"] += 1
            return self._timed(environ, start_response,
                               self.model.s3_median_ms(kind, len(call.body)))
        return self._app(environ, start_response)

    # DynamoDB

    def _dynamodb(self, call: _Call, environ: Environ,
                  start_response: StartResponse) -> Iterable[bytes]:
        refusal = self._admit(call)
        if refusal is not None:
            return _error(start_response, *refusal)
        sizes_before = self._stored_sizes(call)
        try:
            actions = len(call.request.get("TransactItems", []))
            status, headers, body = self._through(
                environ, self.model.dynamodb_median_ms(call.operation, actions))
        finally:
            self._release(call)
        if status.startswith("200"):
            self._charge(call, sizes_before, body)
        start_response(status, headers)
        return [body]

    def _admit(self, call: _Call) -> tuple[int, dict[str, Any]] | None:
        """Refuse a throttled or conflicting call, or hold the items it names."""
        with self._lock:
            self.usage.requests[f"dynamodb.{call.operation}"] += 1
            throttled = self._throttle(call)
            if throttled is not None:
                self.usage.throttled[call.operation] += 1
                return throttled
            if call.operation == "TransactWriteItems":
                busy = [item in self._in_transactions or item in self._in_writes
                        for item in call.items]
                if any(busy):
                    self.usage.conflicts[call.operation] += 1
                    return 400, _cancelled(busy)
                self._in_transactions.update(call.items)
            elif call.operation in _SINGLE_WRITES:
                if any(item in self._in_transactions for item in call.items):
                    self.usage.conflicts[call.operation] += 1
                    return 400, {"__type": _DYNAMODB_ERROR + "TransactionConflictException",
                                 "message": "Transaction is ongoing for the item"}
                self._in_writes.update(call.items)
        return None

    def _release(self, call: _Call) -> None:
        with self._lock:
            held = (self._in_transactions if call.operation == "TransactWriteItems"
                    else self._in_writes if call.operation in _SINGLE_WRITES else None)
            if held is not None:
                held.subtract(call.items)
                for item in call.items:
                    if held[item] <= 0:
                        del held[item]

    def _throttle(self, call: _Call) -> tuple[int, dict[str, Any]] | None:
        """A call whose partitions or table have no capacity left this second (a write is
        charged an estimate up front: a unit per item it names)."""
        writes = call.operation in _SINGLE_WRITES or call.operation in (
            "TransactWriteItems", "BatchWriteItem")
        now = time.monotonic()
        for table, key in call.items or [(str(call.request.get("TableName", "")), "")]:
            partition = hash(key) % self.model.partitions
            if writes:
                buckets = (self._bucket(self._partition_writes, (table, partition),
                                        self.model.partition_write_units),
                           self._bucket(self._table_writes, table,
                                        self.model.table_write_units))
            else:
                buckets = (self._bucket(self._partition_reads, (table, partition),
                                        self.model.partition_read_units),
                           self._bucket(self._table_reads, table,
                                        self.model.table_read_units))
            if not all(bucket.take(1.0, now) for bucket in buckets):
                return 400, {"__type": _DYNAMODB_ERROR + "ProvisionedThroughputExceededException",
                             "message": "The level of configured provisioned throughput for "
                                        "the table was exceeded (the emulator's model)"}
        return None

    @staticmethod
    def _bucket(buckets: dict[Any, _Bucket], name: Any, per_s: float) -> _Bucket:
        bucket = buckets.get(name)
        if bucket is None:
            bucket = buckets[name] = _Bucket(per_s)
        return bucket

    def _stored_sizes(self, call: _Call) -> list[int]:
        """The bytes of each item a write names, as stored before it (0: no item)."""
        if call.operation not in _SINGLE_WRITES and call.operation != "TransactWriteItems":
            return []
        return [_stored_size(call.region, table, key) for table, key in call.items]

    def _charge(self, call: _Call, before: list[int], body: bytes) -> None:
        """Count the capacity units of a call that landed."""
        operation = call.operation
        write_units = read_units = 0.0
        if operation in _SINGLE_WRITES or operation == "TransactWriteItems":
            kinds = ([next(iter(a)) for a in call.request.get("TransactItems", [])]
                     if operation == "TransactWriteItems" else [operation])
            factor = 2.0 if operation == "TransactWriteItems" else 1.0
            for (table, key), old, kind in zip(call.items, before, kinds, strict=True):
                if kind == "ConditionCheck":
                    read_units += 2.0 * _units(old, 4096)
                else:
                    size = max(old, _stored_size(call.region, table, key))
                    write_units += factor * _units(size, 1024)
        elif operation == "BatchWriteItem":
            write_units = sum(_units(_json_size(r.get("PutRequest", {}).get("Item", {})), 1024)
                              for requests in call.request.get("RequestItems", {}).values()
                              for r in requests)
        elif operation in ("GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"):
            read_units = _read_units(operation, call.request, body)
        with self._lock:
            self.usage.write_units += write_units
            self.usage.read_units += read_units

    # SSM and S3

    def _ssm_call(self, call: _Call, environ: Environ,
                  start_response: StartResponse) -> Iterable[bytes]:
        with self._lock:
            self.usage.requests[f"ssm.{call.operation}"] += 1
            if not self._ssm.take(1.0, time.monotonic()):
                self.usage.throttled[f"ssm.{call.operation}"] += 1
                return _error(start_response, 400, {"__type": "ThrottlingException",
                                                    "message": "Rate exceeded"})
        return self._timed(environ, start_response, self.model.ssm_ms)

    # Shared

    def _timed(self, environ: Environ, start_response: StartResponse,
               median_ms: float) -> Iterable[bytes]:
        status, headers, body = self._through(environ, median_ms)
        start_response(status, headers)
        return [body]

    def _through(self, environ: Environ, median_ms: float) -> tuple[str, list[Any], bytes]:
        """moto's answer after the drawn time, half of it before moto's work and the rest
        after (moto's own time counts toward it)."""
        with self._lock:
            spent_s = self._random.lognormvariate(math.log(median_ms), self.model.spread) / 1000
        started = time.monotonic()
        self._sleep(spent_s / 2)
        answered: list[Any] = []

        def keep(status: str, headers: list[Any], exc_info: Any = None) -> Callable[..., Any]:
            answered[:] = [status, headers]
            return lambda data: None

        chunks = self._app(environ, keep)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        self._sleep(max(0.0, spent_s - (time.monotonic() - started)))
        return answered[0], answered[1], body

    def _usage(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        with self._lock:
            if environ.get("REQUEST_METHOD") == "POST":
                self.usage = Usage()
            body = json.dumps({"model": self.model.name, **self.usage.as_json()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]


def _read_call(environ: Environ) -> _Call:
    """Read the request's body (and put it back for moto) and name its service."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    scope = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", "")
                               or environ.get("QUERY_STRING", "").replace("%2F", "/"))
    region = scope.group(1) if scope else "us-east-1"
    if target.startswith(_DYNAMODB_PREFIX):
        request = json.loads(body or b"{}")
        operation = target[len(_DYNAMODB_PREFIX):]
        return _Call("dynamodb", operation, region, body, request,
                     _items_of(operation, request, region))
    if target.startswith(_SSM_PREFIX):
        return _Call("ssm", target[len(_SSM_PREFIX):], region, body)
    if scope is not None and scope.group(2) == "s3":
        return _Call("s3", environ.get("REQUEST_METHOD", ""), region, body)
    return _Call("other", "", region, body)


def _items_of(operation: str, request: dict[str, Any], region: str) -> list[tuple[str, str]]:
    """The (table, key) of each item a write (or GetItem) names, in the order of its actions."""
    if operation == "TransactWriteItems":
        found = []
        for action in request.get("TransactItems", []):
            kind, body = next(iter(action.items()))
            found.append(_item_of(region, body, kind == "Put"))
        return found
    if operation in _SINGLE_WRITES or operation == "GetItem":
        return [_item_of(region, request, operation == "PutItem")]
    return []


def _item_of(region: str, body: dict[str, Any], whole_item: bool) -> tuple[str, str]:
    """(table, key) of an action: a Put names its item whole, the key among its attributes."""
    table = str(body.get("TableName", ""))
    if not whole_item:
        return table, _key_text(body.get("Key", {}))
    item = body.get("Item", {})
    try:
        schema = dynamodb_backends[DEFAULT_ACCOUNT_ID][region].get_table(table)
        names = [schema.hash_key_attr, schema.range_key_attr]
    except Exception:  # noqa: BLE001 - an unknown table: moto will answer the call
        return table, _key_text(item)
    return table, _key_text({name: item[name] for name in names if name and name in item})


def _key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


def _stored_size(region: str, table: str, key_text: str) -> int:
    """The bytes DynamoDB counts for the stored item (names and values), 0 for none."""
    try:
        backend = dynamodb_backends[DEFAULT_ACCOUNT_ID][region]
        item = backend.get_item(table, json.loads(key_text))
    except Exception:  # noqa: BLE001 - an unknown table or key: nothing stored
        return 0
    return int(item.size()) if item is not None else 0


def _units(size_bytes: int, unit_bytes: int) -> float:
    return float(max(1, math.ceil(size_bytes / unit_bytes)))


def _read_units(operation: str, request: dict[str, Any], body: bytes) -> float:
    """Read units of a read's answer: per 4 KB, halved when eventually consistent."""
    answer = json.loads(body or b"{}")
    consistent = bool(request.get("ConsistentRead"))
    factor = 2.0 if operation == "TransactGetItems" else 1.0 if consistent else 0.5
    if operation == "GetItem":
        items = [answer.get("Item", {})]
    elif operation in ("Query", "Scan"):
        # Query and Scan round the whole page up, not each item.
        return factor * _units(sum(_json_size(i) for i in answer.get("Items", [])), 4096)
    elif operation == "BatchGetItem":
        items = [i for table in answer.get("Responses", {}).values() for i in table]
    else:
        items = [r.get("Item", {}) for r in answer.get("Responses", [])]
    return sum(factor * _units(_json_size(item), 4096) for item in items)


def _json_size(item: dict[str, Any]) -> int:
    """About DynamoDB's size of an item in its JSON form: names and values."""
    total = 0
    for name, value in item.items():
        total += len(name.encode())
        for kind, content in value.items():
            total += len(json.dumps(content)) if kind in ("M", "L") else len(str(content))
    return total


def _s3_kind(environ: Environ) -> str:
    method = environ.get("REQUEST_METHOD", "")
    query = environ.get("QUERY_STRING", "")
    if "tagging" in query:
        return "tagging"
    return {"PUT": "put", "GET": "get", "HEAD": "head"}.get(method, "*")


def _cancelled(busy: list[bool]) -> dict[str, Any]:
    reasons = [{"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
               if conflict else {"Code": "None"} for conflict in busy]
    codes = ", ".join(reason["Code"] for reason in reasons)
    return {"__type": _DYNAMODB_ERROR + "TransactionCanceledException",
            "Message": f"Transaction cancelled, please refer cancellation reasons for "
                       f"specific reasons [{codes}]",
            "CancellationReasons": reasons}


def _error(start_response: StartResponse, status: int, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(f"{status} Bad Request", [("Content-Type", "application/x-amz-json-1.0"),
                                             ("Content-Length", str(len(data)))])
    return [data]

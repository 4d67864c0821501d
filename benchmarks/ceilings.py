"""Reference ceilings measured in the same run: a trivial unary RPC, and raw store calls.

Every figure of the scheduler reads as a ratio to these: the trivial unary rate is the
floor under any RPC on this machine with these clients; the store ceilings are what
the store calls of a submission (S3 put_object + DynamoDB put_item) and of an
assignment (one conditional put_item) reach when issued concurrently, from a pool of
threads, against the same moto server; in standalone mode, what the project's own
local stores reach for a submission's two durable writes.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError
from google.protobuf import empty_pb2

from benchmarks.clients import RPC_TIMEOUT_S, Outcome, channel, close_all, closed_loop, ready
from benchmarks.deployment import aws_client, create_bucket_and_table, s3_client
from benchmarks.processes import HOST, child_env, free_ports, python_child
from benchmarks.stats import PhaseResult, Samples
from benchmarks.unary_server import METHOD
from common.clock import SystemClock
from common.identity import Role
from job_manager.model import JobRecord, JobStatus, new_job_id
from job_manager.stores import codec
from job_manager.stores.local_payload_store import SqliteInputsPayloadStore
from job_manager.stores.sqlite_job_store import SqliteJobStore
from job_manager.stores.url_signer import UrlSigner

_serializer = TypeSerializer()


class UnaryCeiling:
    """The trivial server in its own process, and ``clients`` channels to it.

    Measured at the start of a run and again at its end, so a machine whose load
    changed during the run shows it.
    """

    def __init__(self, clients: int, log_dir: Path) -> None:
        self._clients = clients
        port = free_ports(1)[0]
        self._address = f"{HOST}:{port}"
        self._server = python_child(
            "unary-server", [str(Path(__file__).with_name("unary_server.py")), "--port",
                             str(port)], log_dir, child_env({}))
        self._channels: list[grpc.aio.Channel] = []
        self._calls: list[Any] = []

    async def start(self) -> None:
        await self._server.wait_ready(lambda: ready(self._address))
        self._channels = [channel(self._address) for _ in range(self._clients)]
        self._calls = [c.unary_unary(METHOD,
                                     request_serializer=empty_pb2.Empty.SerializeToString,
                                     response_deserializer=empty_pb2.Empty.FromString)
                       for c in self._channels]
        for call in self._calls:  # connect every channel before the clock starts
            await call(empty_pb2.Empty(), timeout=RPC_TIMEOUT_S)

    async def measure(self, name: str, duration_s: float) -> PhaseResult:
        """The rate and latency of Empty → Empty with every client calling back to back."""
        request = empty_pb2.Empty()

        async def ping(index: int) -> Outcome:
            try:
                await self._calls[index](request, timeout=RPC_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return ""

        phase = PhaseResult(name, "rpc", extra={"clients": self._clients})
        await closed_loop(phase, "rpc", self._clients, duration_s, ping)
        return phase

    async def stop(self) -> None:
        await close_all(self._channels)
        self._server.stop()


def _item(record: JobRecord) -> dict[str, Any]:
    # As DynamoDbJobStore writes it.
    return {k: _serializer.serialize(v) for k, v in codec.encode(record).items()}


def _record(payload_bytes: int) -> JobRecord:
    now = datetime.now(UTC)
    return JobRecord(
        job_id=new_job_id(), status=JobStatus.QUEUED, backend="emulator",
        owner_name="bench-0", owner_fingerprint="f" * 64, role=Role.DEVELOPER,
        settings=b"\n\x08emulator\x10d\x1a\x02\x08<2\tdeveloper", timeout_s=60.0,
        input_size_bytes=payload_bytes, sdk_version="1.0.0", submitted_at=now, queued_at=now)


class _Pool:
    """Threads calling a blocking function until a deadline, latencies and errors merged."""

    def __init__(self, workers: int, duration_s: float) -> None:
        self.workers = workers
        self.duration_s = duration_s
        self._lock = threading.Lock()

    def run(self, phase: PhaseResult, step: Callable[[dict[str, Samples]], bool]) -> None:
        """Call ``step`` back to back in every thread; it returns False when out of work."""
        deadline = time.perf_counter() + self.duration_s

        def loop() -> None:
            local: dict[str, Samples] = {}
            done, errors = 0, Counter[str]()
            while time.perf_counter() < deadline:
                try:
                    if not step(local):
                        break
                    done += 1
                except ClientError as exc:
                    errors[str(exc.response.get("Error", {}).get("Code", "ClientError"))] += 1
                except BotoCoreError as exc:
                    errors[type(exc).__name__] += 1
            with self._lock:
                phase.operations += done
                phase.errors.update(errors)
                for kind, samples in local.items():
                    phase.samples(kind).merge(samples)

        started = time.perf_counter()
        with ThreadPoolExecutor(self.workers, thread_name_prefix=phase.name) as pool:
            for future in [pool.submit(loop) for _ in range(self.workers)]:
                future.result()
        phase.duration_s = time.perf_counter() - started


def _timed(local: dict[str, Samples], kind: str, call: Callable[[], object]) -> None:
    began = time.perf_counter()
    call()
    local.setdefault(kind, Samples()).add(time.perf_counter() - began)


def store_ceilings(endpoint: str, workers: int, duration_s: float,
                   payload_bytes: int) -> list[PhaseResult]:
    """The store's floor (one client: put_object, put_item and a conditional put_item back
    to back), then the raw submit (put_object + put_item) and assign (conditional
    put_item) rates."""
    name = f"ceiling-{uuid.uuid4().hex[:8]}"
    create_bucket_and_table(endpoint, name)
    s3 = s3_client(endpoint, pool=workers + 4)
    dynamodb = aws_client("dynamodb", endpoint, pool=workers + 4)
    program = b"x" * payload_bytes
    queued: deque[JobRecord] = deque()
    pool = _Pool(workers, duration_s)

    def submit(local: dict[str, Samples]) -> bool:
        record = _record(payload_bytes)
        began = time.perf_counter()
        _timed(local, "put_object", lambda: s3.put_object(
            Bucket=name, Key=f"{record.job_id}.in.proto", Body=program,
            ContentType="application/protobuf"))
        _timed(local, "put_item", lambda: dynamodb.put_item(
            TableName=name, Item=_item(record),
            ConditionExpression="attribute_not_exists(job_id)"))
        local.setdefault("submit", Samples()).add(time.perf_counter() - began)
        queued.append(record)
        return True

    def assign(local: dict[str, Samples]) -> bool:
        try:
            record = queued.popleft()
        except IndexError:
            return False
        running = replace(record, status=JobStatus.RUNNING, dequeued_at=datetime.now(UTC))
        _timed(local, "assign", lambda: dynamodb.put_item(
            TableName=name, Item=_item(running), ConditionExpression="#status = :expected",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":expected": {"S": "QUEUED"}}))
        return True

    def one_life_of_writes(local: dict[str, Samples]) -> bool:
        began = time.perf_counter()
        submit(local)
        assign(local)
        local.setdefault("floor", Samples()).add(time.perf_counter() - began)
        return True

    # The floor: one client alone, the three writes of a submission and its hand-over
    # back to back, nothing else on the store (issue 28's reference for dispatch).
    floor_phase = PhaseResult("store_floor", "floor", extra={"threads": 1})
    _Pool(1, duration_s).run(floor_phase, one_life_of_writes)
    submit_phase = PhaseResult("store_submit", "submit", extra={"threads": workers})
    pool.run(submit_phase, submit)
    assign_phase = PhaseResult("store_assign", "assign", extra={"threads": workers})
    pool.run(assign_phase, assign)
    return [floor_phase, submit_phase, assign_phase]


async def local_store_ceiling(directory: Path, workers: int, duration_s: float,
                              payload_bytes: int) -> PhaseResult:
    """Raw standalone submit rate: the project's own stores, as a submission calls them.

    The same durable write a submission makes (its program and its row in one SQLite
    transaction, group-committed), from ``workers`` concurrent tasks, with no gRPC, auth
    or queue: the ceiling under standalone submissions on this machine's disk.
    """
    jobs = SqliteJobStore(directory / "jobs.sqlite3")
    await jobs.open()
    payloads = SqliteInputsPayloadStore(directory / "payloads", UrlSigner(b"k" * 32),
                                        "http://127.0.0.1", SystemClock(), jobs)
    program = b"x" * payload_bytes
    phase = PhaseResult("store_submit", "submit", extra={"tasks": workers})
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            record = _record(payload_bytes)
            began = time.perf_counter()
            await payloads.create_with_input(record, program)
            phase.samples("submit").add(time.perf_counter() - began)
            phase.operations += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        phase.duration_s = time.perf_counter() - started
        await jobs.close()
        await payloads.close()
    return phase

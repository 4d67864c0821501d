"""Fenced writes on a DynamoDB that has transaction conflicts (moto, wrapped).

Real DynamoDB cancels a transaction that includes an item another transaction in flight
includes, and refuses a PutItem or UpdateItem on such an item; moto runs one request at
a time and never does. ConflictingDynamoDb adds that to moto, so these tests see what
production sees: every fenced write names its job's fence item (docs/replicas.md, "Fence").
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from common.clock import SystemClock
from job_manager.model import JobRecord, JobStatus
from job_manager.stores import Deposed, Fence, KeyTaken, StoreError
from job_manager.stores.dynamodb_job_store import DynamoDbJobStore, create_table
from job_manager.stores.fence import FENCE_ITEM_PREFIX, fence_item_keys
from job_manager.stores.unreadable import UnreadableRecords
from leadership.dynamodb_lease import DynamoDbLeaseTable
from leadership.lease import Lease, LeaseRecord, LeaseTable, LeaseUnreachable
from scheduler.wiring import aws
from scheduler.wiring.config import AwsConfig, ReplicaConfig
from tests.contract.test_job_store_contract import BULKY_SETTINGS, finished, record, running
from tests.helpers import AwsNames, aws_client, aws_config

TRANSACTION_S = 0.005  # how long a transaction holds its items here: long enough to overlap


class ConflictingDynamoDb:
    """A DynamoDB client that refuses, as DynamoDB does, a write on an item that a
    transaction in flight includes; every other call goes to the client it wraps."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()  # item keys of transactions under way
        self._under_way = 0
        self.transactions = 0  # TransactWriteItems calls that reached the table
        self.conflicts = 0  # requests refused for a conflict
        self.cancelled_transactions = 0  # transactions among them
        self.landed: Counter[str] = Counter()  # item keys written by a transaction that landed
        self.sizes: list[int] = []  # actions in each transaction sent
        self.most_in_flight = 0  # the most transactions under way at once
        self.throttle_next = False  # the next transaction fails as throttled past retries

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def transact_write_items(self, **request: Any) -> Any:
        keys = [_key(next(iter(item.values()))) for item in request["TransactItems"]]
        if self.throttle_next:
            self.throttle_next = False
            raise ClientError({"Error": {"Code": "ThrottlingException",
                                         "Message": "Rate of requests exceeds the allowed"}},
                              "TransactWriteItems")
        with self._lock:
            if any(self._in_flight[key] for key in keys):
                self.conflicts += 1
                self.cancelled_transactions += 1
                raise _cancelled(["TransactionConflict" if self._in_flight[key] else "None"
                                  for key in keys])
            self._in_flight.update(keys)
            self._under_way += 1
            self.most_in_flight = max(self.most_in_flight, self._under_way)
            self.transactions += 1
            self.sizes.append(len(keys))
        try:
            time.sleep(TRANSACTION_S)
            self._while_in_flight()
            answer = self._client.transact_write_items(**request)
            self.landed.update(key for key in keys if not key.startswith(FENCE_ITEM_PREFIX))
            return answer
        finally:
            with self._lock:
                self._in_flight.subtract(keys)
                self._under_way -= 1

    def _while_in_flight(self) -> None:
        """A transaction holds its items here (a hook for LateAnswers)."""

    def put_item(self, **request: Any) -> Any:
        self._refuse_if_in_flight(_key(request), "PutItem")
        return self._client.put_item(**request)

    def update_item(self, **request: Any) -> Any:
        self._refuse_if_in_flight(_key(request), "UpdateItem")
        return self._client.update_item(**request)

    def _refuse_if_in_flight(self, key: str, operation: str) -> None:
        with self._lock:
            if self._in_flight[key]:
                self.conflicts += 1
                raise ClientError({"Error": {
                    "Code": "TransactionConflictException",
                    "Message": "Transaction is ongoing for the item"}}, operation)


def _key(action: dict[str, Any]) -> str:
    return str((action.get("Key") or action["Item"])["job_id"]["S"])


def _cancelled(codes: list[str]) -> ClientError:
    """TransactionCanceledException as DynamoDB answers it: one reason per action."""
    reasons = [{"Code": code} if code == "None"
               else {"Code": code, "Message": "Transaction is ongoing for the item"}
               for code in codes]
    message = ("Transaction cancelled, please refer cancellation reasons for specific "
               f"reasons [{', '.join(codes)}]")
    response: Any = {"Error": {"Code": "TransactionCanceledException", "Message": message},
                     "CancellationReasons": reasons}
    return ClientError(response, "TransactWriteItems")


class Replica:
    """One process's view of the table: the wrapped client, the lease table and the job
    store, as scheduler/wiring/aws.py builds them."""

    def __init__(self, dynamodb: ConflictingDynamoDb, table: str) -> None:
        self.table = table
        self.leases = DynamoDbLeaseTable(dynamodb, table)
        self.store = DynamoDbJobStore(dynamodb, table)


@pytest.fixture
def dynamodb(dynamodb_endpoint: str) -> ConflictingDynamoDb:
    return ConflictingDynamoDb(aws_client("dynamodb", dynamodb_endpoint))


@pytest.fixture
async def leader(dynamodb: ConflictingDynamoDb) -> AsyncIterator[Replica]:
    table = f"jobs-{uuid.uuid4().hex[:12]}"
    create_table(dynamodb, table)
    replica = Replica(dynamodb, table)
    assert await replica.leases.create(LeaseRecord("a", 1, "v0"))
    await replica.store.raise_fence(FENCE)
    yield replica
    await replica.store.close()


FENCE = Fence("a", 1)
# The same term with one fence item: every write in one queue, for the batching rules.
ONE_ITEM = Fence("a", 1, items=1)


def cancelled(job: JobRecord) -> JobRecord:
    """A fenced change of a queued job. A hand-over and a report go out alone, without
    the fence item (job_manager/stores/fence.py), so these tests batch cancels instead."""
    return replace(job, status=JobStatus.CANCELLED, finished_at=job.submitted_at,
                   cancelled_by="owner")


def tagged(job: JobRecord) -> JobRecord:
    """Another fenced change of a queued job: its tags."""
    return replace(job, tags=(("batch", "1"),))


async def test_concurrent_fenced_writes_land_once_each_in_fewer_transactions(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    jobs = [record() for _ in range(50)]
    await asyncio.gather(*(leader.store.create(job, FENCE) for job in jobs))
    assert dynamodb.transactions < len(jobs)
    created = dynamodb.transactions
    landed = await asyncio.gather(
        *(leader.store.transition(job, cancelled(job), FENCE) for job in jobs))
    assert landed == [True] * len(jobs)
    assert dynamodb.transactions - created < len(jobs)
    assert dynamodb.conflicts == 0  # one transaction at a time: none cancelled another
    for job in jobs:
        stored = await leader.store.get(job.job_id)
        assert stored is not None and stored.status is JobStatus.CANCELLED
        assert dynamodb.landed[job.job_id] == 2  # created once, cancelled once


async def test_in_a_batch_a_refused_transition_is_refused_alone(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    jobs = [record() for _ in range(5)]
    await asyncio.gather(*(leader.store.create(job, ONE_ITEM) for job in jobs))
    stale = running(jobs[2])  # the store holds it QUEUED: this time-out is refused
    changes = [(stale, finished(stale, JobStatus.TIMEOUT)) if job is jobs[2]
               else (job, cancelled(job)) for job in jobs]
    sent = dynamodb.transactions
    landed = await asyncio.gather(*(
        leader.store.transition(before, after, ONE_ITEM) for before, after in changes))
    assert landed == [True, True, False, True, True]
    assert dynamodb.transactions - sent == 2  # the batch, then the four again
    for job in jobs:
        stored = await leader.store.get(job.job_id)
        assert stored is not None
        assert stored.status is (JobStatus.QUEUED if job is jobs[2] else JobStatus.CANCELLED)


async def test_a_batch_under_a_raised_fence_is_deposed_entirely(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    jobs = [record() for _ in range(3)]
    await asyncio.gather(*(leader.store.create(job, ONE_ITEM) for job in jobs))
    assert await leader.leases.replace(LeaseRecord("b", 2, "v1"), "v0")  # b took over
    await leader.store.raise_fence(Fence("b", 2))  # and began its term
    new = [record(), replace(record(), idempotency_key="k")]
    writes = [*(leader.store.transition(job, cancelled(job), ONE_ITEM) for job in jobs),
              *(leader.store.create(job, ONE_ITEM) for job in new)]
    sent = dynamodb.transactions
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert all(isinstance(outcome, Deposed) for outcome in outcomes), outcomes
    assert dynamodb.transactions - sent == 1
    for job in jobs:
        stored = await leader.store.get(job.job_id)
        assert stored is not None and stored.status is JobStatus.QUEUED
    for job in new:
        assert await leader.store.get(job.job_id) is None
    assert await leader.store.find_by_idempotency_key(new[1].owner_fingerprint, "k") is None


async def test_lease_renewals_never_fail_under_sustained_fenced_writes(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    await renew_while_writing(leader.leases, leader.store)
    # No job transaction names the lease item: none is ever cancelled by a renewal.
    assert dynamodb.cancelled_transactions == 0


async def test_in_the_aws_stack_renewals_never_meet_job_transactions(
        aws_names: AwsNames, monkeypatch: pytest.MonkeyPatch) -> None:
    wrapped: list[ConflictingDynamoDb] = []
    connect = aws._clients

    def clients(config: AwsConfig, replicas: ReplicaConfig | None) -> aws.Clients:
        made = connect(config, replicas)
        wrapped.append(ConflictingDynamoDb(made.dynamodb))
        # The lease's client of its own sees the same table, and the same transactions.
        return replace(made, dynamodb=wrapped[-1], lease=wrapped[-1])

    monkeypatch.setattr(aws, "_clients", clients)
    config = aws_config(aws_names, "127.0.0.1:1").aws
    assert config is not None
    stack = await aws.aws_stack(config, SystemClock(), timedelta(hours=24), UnreadableRecords())
    assert stack.lease_table is not None
    assert await stack.lease_table.create(LeaseRecord("a", 1, "v0"))
    try:
        assert isinstance(stack.jobs, DynamoDbJobStore)
        await stack.jobs.raise_fence(FENCE)
        await renew_while_writing(stack.lease_table, stack.jobs)
    finally:
        await stack.close()
    assert wrapped[0].cancelled_transactions == 0


async def renew_while_writing(leases: LeaseTable, store: DynamoDbJobStore) -> None:
    """Renew the lease 40 times while eight writers create and cancel jobs; every
    renewal must land (a refused one raises LeaseUnreachable)."""
    stop = asyncio.Event()

    async def write_jobs() -> int:
        written = 0
        while not stop.is_set():
            job = record()
            await store.create(job, FENCE)
            assert await store.transition(job, cancelled(job), FENCE)
            written += 1
        return written

    writers = [asyncio.create_task(write_jobs()) for _ in range(8)]
    version = "v0"
    try:
        for renewal in range(1, 41):
            renewed = LeaseRecord("a", 1, f"v{renewal}")
            assert await leases.replace(renewed, version)
            version = renewed.version
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        written = sum(await asyncio.gather(*writers))
    assert written > 40


async def test_conflicts_with_another_process_are_retried(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    # Another process whose transactions name the lease item too (its own gate): the two
    # committers cancel each other's transactions, and each tries again until it lands.
    other = Replica(dynamodb, leader.table).store
    jobs = [record() for _ in range(60)]
    for start in range(0, len(jobs), 20):  # rounds of ten each, side by side
        await asyncio.gather(*(store.create(job, FENCE) for job, store in
                               zip(jobs[start:start + 20], [leader.store, other] * 10,
                                   strict=True)))
    assert dynamodb.conflicts > 0
    for job in jobs:
        assert await leader.store.get(job.job_id) is not None
        assert dynamodb.landed[job.job_id] == 1
    await other.close()


async def test_two_writes_to_one_job_take_two_transactions_in_order(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    # One transaction may not hold two actions on one item: the second waits for the next.
    job = record()
    await leader.store.create(job, FENCE)
    labelled = tagged(job)
    landed = await asyncio.gather(leader.store.transition(job, labelled, FENCE),
                                  leader.store.transition(labelled, cancelled(labelled), FENCE))
    assert list(landed) == [True, True]
    stored = await leader.store.get(job.job_id)
    assert stored is not None and stored.status is JobStatus.CANCELLED
    assert stored.tags == (("batch", "1"),)


async def test_a_batch_stays_within_dynamodbs_limits(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    # 100 actions to a transaction, the fence check among them; 4 MB in all (kept to 2).
    many = [replace(record(), idempotency_key=f"k{i}") for i in range(60)]  # 2 actions each
    await asyncio.gather(*(leader.store.create(job, ONE_ITEM) for job in many))
    assert max(dynamodb.sizes) <= 100 and len(dynamodb.sizes) >= 2
    sent = len(dynamodb.sizes)
    bulky = [record(settings=BULKY_SETTINGS) for _ in range(12)]  # 256 kB each
    await asyncio.gather(*(leader.store.create(job, ONE_ITEM) for job in bulky))
    assert max(dynamodb.sizes[sent:]) <= 1 + 2_000_000 // len(BULKY_SETTINGS)
    for job in [*many, *bulky]:
        assert await leader.store.get(job.job_id) is not None


async def test_in_a_batch_a_taken_key_is_refused_alone(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    first = replace(record(), idempotency_key="k")
    await leader.store.create(first, FENCE)
    again = replace(record(), idempotency_key="k")  # the same owner's key, a second job
    others = [record() for _ in range(3)]
    outcomes = await asyncio.gather(*(leader.store.create(job, FENCE)
                                      for job in [others[0], again, *others[1:]]),
                                    return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [type(None), KeyTaken, *[type(None)] * 2]
    assert await leader.store.get(again.job_id) is None
    for job in others:
        assert await leader.store.get(job.job_id) is not None


async def test_a_batch_that_fails_otherwise_fails_each_write_in_it(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    jobs = [record() for _ in range(4)]
    dynamodb.throttle_next = True
    outcomes = await asyncio.gather(*(leader.store.create(job, ONE_ITEM) for job in jobs),
                                    return_exceptions=True)
    assert all(isinstance(outcome, StoreError) for outcome in outcomes), outcomes
    await asyncio.gather(*(leader.store.create(job, ONE_ITEM) for job in jobs))  # then they land
    for job in jobs:
        assert await leader.store.get(job.job_id) is not None


class BusyLeaseItem:
    """A client whose next ``busy`` puts find the item in another process's transaction."""

    def __init__(self, client: Any, busy: int) -> None:
        self._client = client
        self.busy = busy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_item(self, **request: Any) -> Any:
        if self.busy:
            self.busy -= 1
            raise ClientError({"Error": {"Code": "TransactionConflictException",
                                         "Message": "Transaction is ongoing for the item"}},
                              "PutItem")
        return self._client.put_item(**request)


async def test_a_lease_write_retries_another_process_transaction_twice(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    busy = BusyLeaseItem(dynamodb, busy=2)
    leases = DynamoDbLeaseTable(busy, leader.table)
    assert await leases.replace(LeaseRecord("a", 1, "v1"), "v0")
    busy.busy = 3
    with pytest.raises(LeaseUnreachable) as unreachable:
        await leases.replace(LeaseRecord("a", 1, "v2"), "v1")
    assert str(unreachable.value) == "the lease item was in other transactions 3 times in a row"
    assert (await leases.read()) == LeaseRecord("a", 1, "v1")


class LateAnswers(ConflictingDynamoDb):
    """Transactions land as usual, but their answers are held back until ``answer`` is
    set: a slow network, or a proxy in front of DynamoDB, while the table moves on."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.answer = threading.Event()
        self.landed_event = threading.Event()
        self.hold_inside = False  # hold the next transaction in DynamoDB's hands instead
        self.inside = threading.Event()

    def transact_write_items(self, **request: Any) -> Any:
        if self.hold_inside:
            return super().transact_write_items(**request)
        answer = super().transact_write_items(**request)
        self.landed_event.set()
        self.answer.wait()
        return answer

    def _while_in_flight(self) -> None:
        if self.hold_inside:
            self.hold_inside = False
            self.inside.set()
            self.answer.wait()


async def test_the_leader_renews_while_a_job_transactions_answer_hangs(
        dynamodb_endpoint: str) -> None:
    # Renewals wait behind no job write: one whose answer never comes must not keep the
    # leader from renewing (issue 27, item 7). Before, the renewal queued at the shared
    # gate behind the hung transaction, its round ended unanswered, and the leader
    # stepped down once its deadline passed.
    dynamodb = LateAnswers(aws_client("dynamodb", dynamodb_endpoint))
    table = f"jobs-{uuid.uuid4().hex[:12]}"
    create_table(dynamodb, table)
    replica = Replica(dynamodb, table)
    lease = Lease(replica.leases, "a", time.monotonic, duration_s=30, renew_every_s=2)
    await lease.step()
    assert lease.leading
    fence = Fence("a", lease.epoch)
    await replica.store.raise_fence(fence)
    write = asyncio.create_task(replica.store.create(record(), fence))
    try:
        await asyncio.to_thread(dynamodb.landed_event.wait, 10)
        for _ in range(3):
            before = await replica.leases.read()
            await lease.step()
            after = await replica.leases.read()
            assert lease.leading
            assert before is not None and after is not None
            assert after.version != before.version, "the renewal did not land"
    finally:
        dynamodb.answer.set()
        await write
        await replica.store.close()


# --- fence items (docs/replicas.md, "Fence") -----------------------------------------------
async def test_a_terms_writes_run_side_by_side_on_its_fence_items(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    jobs = [record() for _ in range(40)]
    await asyncio.gather(*(leader.store.create(job, FENCE) for job in jobs))
    assert dynamodb.most_in_flight > 1  # several fence items, a transaction in flight on each
    assert dynamodb.conflicts == 0  # and none of them cancelled another
    items = {FENCE.item_of(job.job_id) for job in jobs}
    assert len(items) > 1


async def test_raising_a_fence_names_the_term_on_every_item_and_never_lowers_one(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    def fence_items() -> dict[str, tuple[str, str]]:
        found = {}
        for item in fence_item_keys():
            got = dynamodb.get_item(TableName=leader.table, Key={"job_id": {"S": item}},
                                    ConsistentRead=True)["Item"]
            found[item] = (got["holder"]["S"], got["epoch"]["N"])
        return found

    assert set(fence_items().values()) == {("a", "1")}
    await leader.store.raise_fence(FENCE)  # again, the same term: harmless
    await leader.store.raise_fence(Fence("b", 3))
    assert set(fence_items().values()) == {("b", "3")}
    for stale in (Fence("a", 2), Fence("a", 3)):  # an earlier epoch, or another's
        with pytest.raises(Deposed):
            await leader.store.raise_fence(stale)
    assert set(fence_items().values()) == {("b", "3")}


async def test_a_raise_waits_for_a_deposed_leaders_transaction_in_flight(
        dynamodb_endpoint: str) -> None:
    # The old leader's transaction passed its fence check and is still in DynamoDB's hands
    # when the new leader raises the fence: the raise of its item is refused for the
    # conflict and tried again, so it lands after it, and the recovery that follows reads
    # the old leader's write.
    dynamodb = LateAnswers(aws_client("dynamodb", dynamodb_endpoint))
    dynamodb.hold_inside = True
    table = f"jobs-{uuid.uuid4().hex[:12]}"
    create_table(dynamodb, table)
    store = DynamoDbJobStore(dynamodb, table)
    old, new = Fence("a", 1), Fence("b", 2)
    await store.raise_fence(old)
    late = record()
    write = asyncio.create_task(store.create(late, old))
    await asyncio.to_thread(dynamodb.inside.wait, 10)
    raised = asyncio.create_task(store.raise_fence(new))
    await asyncio.sleep(0.2)
    assert not raised.done()  # its item is in the old leader's transaction
    assert dynamodb.conflicts > 0
    dynamodb.answer.set()
    await write
    await raised
    assert await store.get(late.job_id) is not None
    with pytest.raises(Deposed):
        await store.create(record(), old)
    await store.close()


async def test_a_hand_over_and_a_report_go_out_alone_and_carry_the_term(
        dynamodb: ConflictingDynamoDb, leader: Replica) -> None:
    # The two writes of every job's life are plain conditional writes (fence.py): no
    # transaction, no fence check, so they cost one write unit each instead of two.
    job = record()
    await leader.store.create(job, FENCE)
    sent = dynamodb.transactions
    run = running(job)
    assert await leader.store.transition(job, run, FENCE)
    assert await leader.store.transition(run, finished(run), FENCE)
    assert dynamodb.transactions == sent
    item = dynamodb.get_item(TableName=leader.table, Key={"job_id": {"S": job.job_id}})["Item"]
    assert (item["status"]["S"], item["term"]["N"]) == ("COMPLETED", "1")

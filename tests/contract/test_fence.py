"""The lease and its fence on DynamoDB (moto): a deposed leader's job writes change nothing.

docs/replicas.md: every write of a leader's term is conditional, in one transaction, on
its job's fence item naming it at its epoch; a new term raises every fence item to its
epoch before it reads a job.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from job_manager.model import RECORD_FORMAT, JobStatus
from job_manager.stores import Deposed, Fence, RecordTooNew
from job_manager.stores.dynamodb_job_store import DynamoDbJobStore, create_table
from leadership.dynamodb_lease import LEASE_KEY, DynamoDbLeaseTable
from leadership.lease import Lease, LeaseRecord, LeaseUnreachable
from tests.contract.test_job_store_contract import finished, record, running
from tests.contract.test_record_formats import RawDynamoDb, newer_writer
from tests.helpers import aws_client


@pytest.fixture
def table(dynamodb_endpoint: str) -> str:
    name = f"jobs-{uuid.uuid4().hex[:12]}"
    create_table(aws_client("dynamodb", dynamodb_endpoint), name)
    return name


def lease(dynamodb_endpoint: str, table: str, me: str) -> Lease:
    return Lease(DynamoDbLeaseTable(aws_client("dynamodb", dynamodb_endpoint), table), me,
                 time.monotonic, 6.0, 1.5, (f"{me}:8082", f"{me}:8081"))


def fence_of(held: Lease) -> Fence:
    return Fence(held.me, held.epoch)


async def lead(store: DynamoDbJobStore, held: Lease) -> Fence:
    """What a new term does before it reads a job: raise its fence."""
    await store.raise_fence(fence_of(held))
    return fence_of(held)


async def test_the_lease_record_round_trips_and_writes_are_conditional(
        dynamodb_endpoint: str, table: str) -> None:
    leases = DynamoDbLeaseTable(aws_client("dynamodb", dynamodb_endpoint), table)
    assert await leases.read() is None
    first = LeaseRecord("a", 1, "v1", "a:8082", "a:8081")
    assert await leases.create(first)
    assert not await leases.create(replace(first, holder="b"))  # one record, one creator
    assert await leases.read() == first
    assert not await leases.replace(replace(first, holder="b", version="v2"), "stale")
    released = replace(first, version="v2", released=True)
    assert await leases.replace(released, "v1")
    assert await leases.read() == released


async def test_an_unreachable_table_is_lease_unreachable(dynamodb_endpoint: str) -> None:
    leases = DynamoDbLeaseTable(aws_client("dynamodb", dynamodb_endpoint), "no-such-table")
    with pytest.raises(LeaseUnreachable):
        await leases.read()


async def test_the_leaders_fenced_writes_land(dynamodb_endpoint: str, table: str) -> None:
    a = lease(dynamodb_endpoint, table, "a")
    await a.step()
    store = DynamoDbJobStore(aws_client("dynamodb", dynamodb_endpoint), table)
    await lead(store, a)
    job = record()
    await store.create(job, fence_of(a))
    assert await store.transition(job, running(job), fence_of(a))
    stored = await store.get(job.job_id)
    assert stored is not None and stored.status is JobStatus.RUNNING
    # The compare-and-set still holds under the fence: a second hand-over is refused.
    assert not await store.transition(job, running(job, node="qpu-2"), fence_of(a))
    # The same write again (a retried request whose first answer was lost) is its own.
    assert await store.transition(job, running(job), fence_of(a))
    await store.close()


async def test_a_fenced_write_of_a_record_a_newer_scheduler_changed_is_refused(
        dynamodb_endpoint: str, table: str) -> None:
    a = lease(dynamodb_endpoint, table, "a")
    await a.step()
    client = aws_client("dynamodb", dynamodb_endpoint)
    store, raw = DynamoDbJobStore(client, table), RawDynamoDb(client, table)
    await lead(store, a)
    job = record()
    await store.create(job, fence_of(a))
    newer_writer(raw, job.job_id, RECORD_FORMAT + 1)
    written = raw.read(job.job_id)
    with pytest.raises(RecordTooNew):
        await store.transition(job, running(job), fence_of(a))
    assert raw.read(job.job_id) == written
    await store.close()


async def test_a_deposed_leader_changes_no_job(dynamodb_endpoint: str, table: str) -> None:
    a, b = lease(dynamodb_endpoint, table, "a"), lease(dynamodb_endpoint, table, "b")
    await a.step()
    store = DynamoDbJobStore(aws_client("dynamodb", dynamodb_endpoint), table)
    await lead(store, a)
    queued, handed = record(), record()
    await store.create(queued, fence_of(a))
    await store.create(handed, fence_of(a))
    assert await store.transition(handed, running(handed), fence_of(a))
    # a's fence as its manager holds it: asking a's own lease whether it still holds.
    stale = Fence(a.me, a.epoch, holds=lambda: a.holds(1))
    sent_late = fence_of(a)  # a write a sent before its lease lapsed, landing now
    await a.release()  # as if a slept through its lease: b takes over
    await b.step()
    assert b.leading and b.epoch == 2
    # Until b's term raises its fence, a's fenced writes still land; b raises it before
    # it reads a job (JobManager.recover), so none of them is missed.
    await lead(store, b)

    # Fenced: a creation, a cancel.
    with pytest.raises(Deposed) as deposed:
        await store.transition(queued, replace(queued, status=JobStatus.CANCELLED), stale)
    assert (str(deposed.value), deposed.value.fence) == (
        "this replica no longer leads at epoch 1", stale)
    other = record()
    with pytest.raises(Deposed):
        await store.create(other, stale)
    with pytest.raises(Deposed):
        await store.create(replace(other, idempotency_key="k"), stale)
    assert await store.get(other.job_id) is None
    # Alone (a hand-over, a report): a's own clock says its lease lapsed, so nothing is sent.
    with pytest.raises(Deposed):
        await store.transition(queued, running(queued), stale)
    with pytest.raises(Deposed):
        await store.transition(running(handed), finished(running(handed)), stale)
    # One sent before the lapse lands only where b has not written: b's hand-over of
    # the queued job stamps it with epoch 2, and a's late one is refused.
    assert await store.transition(queued, running(queued, node="qpu-2"), fence_of(b))
    with pytest.raises(Deposed):
        await store.transition(queued, running(queued), sent_late)
    stored = await store.get(queued.job_id)
    assert stored is not None and stored.actual_backend == "qpu-2"
    stored = await store.get(handed.job_id)
    assert stored is not None and stored.status is JobStatus.RUNNING
    await store.close()


async def test_a_write_sent_before_the_lease_lapsed_lands_where_no_later_term_wrote(
        dynamodb_endpoint: str, table: str) -> None:
    # What the new leader's sweep is for (job_manager/phases/liveness.py): a hand-over
    # or a report a deposed leader sent just before its lease lapsed, landing on a job
    # the new term has not written yet, lands; no other write of that term does.
    a, b = lease(dynamodb_endpoint, table, "a"), lease(dynamodb_endpoint, table, "b")
    await a.step()
    store = DynamoDbJobStore(aws_client("dynamodb", dynamodb_endpoint), table)
    await lead(store, a)
    queued, handed = record(), record()
    for job in (queued, handed):
        await store.create(job, fence_of(a))
    assert await store.transition(handed, running(handed), fence_of(a))
    sent_late = fence_of(a)
    await a.release()
    await b.step()
    await lead(store, b)

    assert await store.transition(queued, running(queued), sent_late)
    assert await store.transition(running(handed), finished(running(handed)), sent_late)
    landed = [await store.get(job.job_id) for job in (queued, handed)]
    assert [job.status if job else None for job in landed] == [
        JobStatus.RUNNING, JobStatus.COMPLETED]
    # The new term writes over it as over any other: by compare-and-set.
    assert await store.transition(running(queued), finished(running(queued)), fence_of(b))
    await store.close()


async def test_a_follower_can_never_write(dynamodb_endpoint: str, table: str) -> None:
    a = lease(dynamodb_endpoint, table, "a")
    await a.step()
    store = DynamoDbJobStore(aws_client("dynamodb", dynamodb_endpoint), table)
    await lead(store, a)
    follower = Fence("b", 0)  # a follower's manager is fenced at epoch 0
    with pytest.raises(Deposed):
        await store.create(record(), follower)
    nobody = Fence("a", 0)
    with pytest.raises(Deposed):
        await store.create(record(), nobody)
    await store.close()


async def test_with_no_lease_record_a_fenced_write_is_refused(
        dynamodb_endpoint: str, table: str) -> None:
    store = DynamoDbJobStore(aws_client("dynamodb", dynamodb_endpoint), table)
    with pytest.raises(Deposed):
        await store.create(record(), Fence("a", 1))
    await store.close()


async def test_the_lease_and_fence_items_are_invisible_to_recovery(
        dynamodb_endpoint: str, table: str) -> None:
    a = lease(dynamodb_endpoint, table, "a")
    await a.step()
    store = DynamoDbJobStore(aws_client("dynamodb", dynamodb_endpoint), table)
    await lead(store, a)
    for status in JobStatus:
        assert [r async for r in store.list_by_status(status)] == []
    await store.close()


# --- held since the mutation run of issue 27 (docs/mutation.md) -------------------------
async def test_a_lease_item_without_the_later_attributes_reads_as_unreleased_and_addressless(
        dynamodb_endpoint: str, table: str) -> None:
    # An item written before the addresses and the released flag existed (an older
    # version's leader during a rolling upgrade) is read, not refused.
    client = aws_client("dynamodb", dynamodb_endpoint)
    client.put_item(TableName=table, Item={"job_id": {"S": LEASE_KEY}, "holder": {"S": "a"},
                                           "epoch": {"N": "3"}, "version": {"S": "v3"}})
    assert await DynamoDbLeaseTable(client, table).read() == LeaseRecord("a", 3, "v3")


class Recording:
    """A DynamoDB client that keeps the requests of the calls made through it."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._client, name)

        def recorded(**request: Any) -> Any:
            self.requests.append((name, request))
            return call(**request)

        return recorded


async def test_the_lease_is_read_strongly_consistently(dynamodb_endpoint: str, table: str) -> None:
    # An eventually consistent read may show a version already renewed away: a watcher
    # would count a live leader's lease as unchanged, and take it while it is held.
    client = Recording(aws_client("dynamodb", dynamodb_endpoint))
    await DynamoDbLeaseTable(client, table).read()
    assert [(name, request.get("ConsistentRead")) for name, request in client.requests] == [
        ("get_item", True)]


class Failing:
    """A DynamoDB client whose every call fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_item(self, **request: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(("error", "said"), [
    (ClientError(cast(Any, {"ResponseMetadata": {"HTTPStatusCode": 500}}), "GetItem"),
     "ClientError: An error occurred (Unknown) when calling the GetItem operation: Unknown"),
    (EndpointConnectionError(endpoint_url="http://db"),
     'EndpointConnectionError: Could not connect to the endpoint URL: "http://db"'),
])
async def test_a_failed_lease_call_is_lease_unreachable_naming_its_error(
        error: Exception, said: str) -> None:
    # Even an answer without an error code: the lease's round logs it and goes on. The
    # words are the only trace of why a leader stepped down (its cause names them).
    with pytest.raises(LeaseUnreachable) as unreachable:
        await DynamoDbLeaseTable(Failing(error), "jobs").read()
    assert str(unreachable.value) == said


async def test_a_deposed_leader_writes_no_document(dynamodb_endpoint: str, table: str) -> None:
    a, b = lease(dynamodb_endpoint, table, "a"), lease(dynamodb_endpoint, table, "b")
    await a.step()
    store = DynamoDbJobStore(aws_client("dynamodb", dynamodb_endpoint), table)
    await lead(store, a)
    assert await store.write_document("bookings", b"a's", 0, fence_of(a))
    stale = fence_of(a)
    await a.release()
    await b.step()
    await lead(store, b)
    with pytest.raises(Deposed):
        await store.write_document("bookings", b"late", 1, stale)
    found = await store.read_document("bookings")
    assert found is not None and found.body == b"a's"
    assert await store.write_document("bookings", b"b's", 1, fence_of(b))
    assert not await store.write_document("bookings", b"b's again", 1, fence_of(b))
    await store.close()

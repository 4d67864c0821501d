"""The committer of fenced writes (job_manager/stores/fenced_commits.py), on a scripted
client and a clock that moves when told: how long a write in conflict is tried, that a
write queued meanwhile is never lost, and how the waits between tries grow.

tests/contract/test_fenced_batches.py drives the same committer on moto with real
conflicts; these hold the rules that need a clock or an exact order of events.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from job_manager.stores import fenced_commits
from job_manager.stores.blocking import BlockingCalls
from job_manager.stores.errors import StoreError
from job_manager.stores.fence import Fence
from job_manager.stores.fenced_commits import FencedCommits

FENCE = Fence("a", 1, items=1)  # one fence item: every write in one queue
ANSWER_S = 10.0  # a bound on a hang, never reached when the committer works


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def conflict() -> ClientError:
    return ClientError({"Error": {"Code": "TransactionConflictException",
                                  "Message": "Transaction is ongoing for the item"}},
                       "TransactWriteItems")


class Scripted:
    """TransactWriteItems answering from ``answers`` in turn (an error to raise, or None:
    it lands), then landing; each call takes ``step_s`` of the clock."""

    def __init__(self, clock: Clock, answers: list[Exception | None], step_s: float = 0.0,
                 ) -> None:
        self.clock = clock
        self.answers = answers
        self.step_s = step_s
        self.sent: list[list[dict[str, Any]]] = []
        self.called = threading.Event()
        self.go_on = threading.Event()
        self.go_on.set()

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> None:
        self.sent.append(TransactItems)
        self.called.set()
        self.go_on.wait()
        self.clock.now += self.step_s
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def calls() -> AsyncIterator[BlockingCalls]:
    made = BlockingCalls("dynamodb-jobs", 2, (ClientError, BotoCoreError))
    yield made
    made.close()


def put(job_id: str) -> list[dict[str, Any]]:
    return [{"Put": {"TableName": "jobs", "Item": {"job_id": {"S": job_id}}}}]


def landed(own: list[dict[str, Any]] | None) -> object:
    return "landed" if own is None else "refused"


async def write(commits: FencedCommits, job_id: str) -> object:
    return await asyncio.wait_for(
        commits.write(FENCE, put(job_id), frozenset({job_id}), landed), ANSWER_S)


async def test_a_write_in_conflict_is_tried_for_exactly_the_give_up_time_then_fails(
        clock: Clock, calls: BlockingCalls) -> None:
    client = Scripted(clock, [conflict()] * 10, step_s=0.5)
    commits = FencedCommits(client, "jobs", calls, clock)
    with pytest.raises(StoreError) as failed:
        await write(commits, "j1")
    assert str(failed.value) == "dynamodb-jobs: transaction conflicts for 2 s"
    # In conflict since the first answer (at 100.5): 2.0 s later (the fifth) it is still
    # tried; past that (the sixth, at 103.0) it fails.
    assert len(client.sent) == 6


async def test_a_write_queued_while_a_batch_is_in_conflict_is_not_lost(
        clock: Clock, calls: BlockingCalls) -> None:
    client = Scripted(clock, [conflict()])
    client.go_on.clear()
    commits = FencedCommits(client, "jobs", calls, clock)
    first = asyncio.ensure_future(write(commits, "j1"))
    await asyncio.to_thread(client.called.wait, ANSWER_S)  # its transaction is under way
    second = asyncio.ensure_future(write(commits, "j2"))  # waits for the next one
    await asyncio.sleep(0)
    client.go_on.set()  # the first is cancelled by a conflict, and goes in front again
    assert list(await asyncio.gather(first, second)) == ["landed", "landed"]


def test_the_wait_after_a_conflict_doubles_from_5_ms_up_to_50_ms(
        monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    monkeypatch.setattr(random, "uniform", uniform)
    waits = [fenced_commits._backoff_s(conflicts) for conflicts in range(1, 6)]
    assert waits == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05])
    assert [low for low, _ in drawn] == [0.005] * 5


def cancelled(codes: list[str]) -> ClientError:
    return ClientError(cast(Any, {
        "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
        "CancellationReasons": [{"Code": code} for code in codes]}), "TransactWriteItems")


@pytest.mark.parametrize("codes", [
    ["None"],  # fewer reasons than the lease check and the two writes
    ["None", "None", "None"],  # as many, and none says why
])
async def test_a_cancellation_that_explains_no_write_fails_each_write_of_the_batch(
        clock: Clock, calls: BlockingCalls, codes: list[str]) -> None:
    error = cancelled(codes)
    client = Scripted(clock, [error])
    commits = FencedCommits(client, "jobs", calls, clock)
    outcomes = await asyncio.gather(write(commits, "j1"), write(commits, "j2"),
                                    return_exceptions=True)
    assert len(client.sent) == 1  # one batch, not tried again
    said = f"dynamodb-jobs: TransactionCanceledException: {error}"
    assert [(type(outcome), str(outcome)) for outcome in outcomes] == [(StoreError, said)] * 2


def refused_if_conditional(own: list[dict[str, Any]] | None) -> object:
    return "landed" if own is None else own[0].get("Code")


@pytest.mark.parametrize("quiet", [{"Code": "None"}, {}])  # some answers leave it out
async def test_a_write_cancelled_only_by_anothers_condition_goes_again_before_later_ones(
        clock: Clock, calls: BlockingCalls, quiet: dict[str, str]) -> None:
    error = ClientError(cast(Any, {
        "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
        "CancellationReasons": [{"Code": "None"}, {"Code": "ConditionalCheckFailed"}, quiet]}),
        "TransactWriteItems")
    client = Scripted(clock, [error])
    client.go_on.clear()
    commits = FencedCommits(client, "jobs", calls, clock)

    def start(job_id: str) -> asyncio.Future[object]:
        return asyncio.ensure_future(asyncio.wait_for(commits.write(
            FENCE, put(job_id), frozenset({job_id}), refused_if_conditional), ANSWER_S))

    refused, cancelled_with_it = start("j1"), start("j2")
    await asyncio.to_thread(client.called.wait, ANSWER_S)
    later = start("j3")  # queued while the first transaction is under way
    await asyncio.sleep(0)
    client.go_on.set()
    assert list(await asyncio.gather(refused, cancelled_with_it, later)) == [
        "ConditionalCheckFailed", "landed", "landed"]
    second = [item["Put"]["Item"]["job_id"]["S"] for item in client.sent[1][1:]]
    assert second == ["j2", "j3"]  # the cancelled one first: writes land in order


async def test_a_failure_without_an_error_code_fails_each_write_naming_it(
        clock: Clock, calls: BlockingCalls) -> None:
    client = Scripted(clock, [ClientError(cast(Any, {}), "TransactWriteItems")])
    commits = FencedCommits(client, "jobs", calls, clock)
    with pytest.raises(StoreError) as failed:
        await write(commits, "j1")
    assert str(failed.value) == ("dynamodb-jobs: ClientError: An error occurred (Unknown) "
                                 "when calling the TransactWriteItems operation: Unknown")


async def test_a_write_cancelled_for_another_reason_than_its_condition_fails_naming_each(
        clock: Clock, calls: BlockingCalls) -> None:
    client = Scripted(clock, [cancelled(["None", "ValidationError", "ThrottlingError"])])
    commits = FencedCommits(client, "jobs", calls, clock)
    two_actions = put("j1") + put("k1")
    with pytest.raises(StoreError) as failed:
        await asyncio.wait_for(
            commits.write(FENCE, two_actions, frozenset({"j1", "k1"}), landed), ANSWER_S)
    assert str(failed.value) == (
        "dynamodb-jobs: transaction cancelled: ValidationError, ThrottlingError")


async def test_a_write_to_a_closed_store_is_refused_in_words(
        clock: Clock, calls: BlockingCalls) -> None:
    client = Scripted(clock, [])
    commits = FencedCommits(client, "jobs", calls, clock)
    calls.close()
    with pytest.raises(StoreError) as refused:
        await write(commits, "j1")
    assert str(refused.value) == "dynamodb-jobs: the store is closed"
    assert client.sent == []


def written(client: Scripted) -> list[list[str]]:
    """The job ids each transaction sent wrote, the lease check left out."""
    return [[item["Put"]["Item"]["job_id"]["S"] for item in sent[1:]] for sent in client.sent]


async def write_all(commits: FencedCommits,
                    writes: list[tuple[Fence, list[dict[str, Any]], str]]) -> None:
    """Queue ``writes`` (their fence, actions and item key) together, as calls made side
    by side do, and wait for all of them."""
    await asyncio.wait_for(asyncio.gather(*(
        commits.write(fence, actions, frozenset({key}), landed)
        for fence, actions, key in writes)), ANSWER_S)


async def test_a_transaction_holds_at_most_100_actions_the_lease_check_among_them(
        clock: Clock, calls: BlockingCalls) -> None:
    client = Scripted(clock, [])
    commits = FencedCommits(client, "jobs", calls, clock)
    await write_all(commits, [(FENCE, put(f"j{i}"), f"j{i}") for i in range(150)])
    assert [len(sent) for sent in client.sent] == [100, 52]  # 99 writes, then 51


def sized(job_id: str, size: int) -> list[dict[str, Any]]:
    """A Put of ``job_id`` (two characters) of ``size`` bytes as the committer counts
    them: every name and text value by its length, any other value as 8."""
    # Put 3, Item 4, job_id+S+id 9, flag+BOOL+8 16, p+S 2: 34 besides the padding.
    return [{"Put": {"Item": {"job_id": {"S": job_id}, "flag": {"BOOL": True},
                              "p": {"S": "x" * (size - 34)}}}}]


@pytest.mark.parametrize(("sizes", "per_transaction"), [
    ([1_000_000, 1_000_000, 1_000_000], [2, 1]),  # exactly 2 MB fit, a byte more does not
    ([1_000_000, 1_000_001], [1, 1]),
])
async def test_a_transaction_holds_at_most_2_mb_of_writes(
        clock: Clock, calls: BlockingCalls, sizes: list[int], per_transaction: list[int],
) -> None:
    client = Scripted(clock, [])
    commits = FencedCommits(client, "jobs", calls, clock)
    await write_all(commits, [(FENCE, sized(f"j{i}", size), f"j{i}")
                              for i, size in enumerate(sizes)])
    assert [len(sent) - 1 for sent in client.sent] == per_transaction


async def test_writes_to_one_item_land_in_the_order_they_were_made(
        clock: Clock, calls: BlockingCalls) -> None:
    # A write held back (another job's write before it, another term's fence) holds back
    # every later write to its item, though those would fit the transaction.
    client = Scripted(clock, [])
    commits = FencedCommits(client, "jobs", calls, clock)
    later_term = Fence("a", 2, items=1)
    await write_all(commits, [(FENCE, put("j1"), "j1"), (FENCE, put("j2"), "j2"),
                              (FENCE, put("j1"), "j1"), (later_term, put("j3"), "j3"),
                              (later_term, put("j4"), "j4"), (FENCE, put("j3"), "j3")])
    assert written(client) == [["j1", "j2"], ["j1"], ["j3", "j4"], ["j3"]]


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The conflicts in a row each wait after a conflict was drawn for (waiting none)."""
    drawn: list[int] = []

    def backoff_s(conflicts: int) -> float:
        drawn.append(conflicts)
        return 0.0

    monkeypatch.setattr(fenced_commits, "_backoff_s", backoff_s)
    return drawn


async def test_the_waits_between_tries_grow_with_conflicts_in_a_row_only(
        clock: Clock, calls: BlockingCalls, waits: list[int]) -> None:
    client = Scripted(clock, [conflict(), conflict(), None, conflict(), None])
    commits = FencedCommits(client, "jobs", calls, clock)
    # Two writes to one job: two transactions of one run of the committer.
    await write_all(commits, [(FENCE, put("j1"), "j1"), (FENCE, put("j1"), "j1")])
    assert waits == [1, 2, 1]  # the first try of each waits for nothing
    assert len(client.sent) == 5


async def test_any_other_failure_of_a_transaction_fails_its_writes_as_a_store_error(
        clock: Clock, calls: BlockingCalls) -> None:
    client = Scripted(clock, [ValueError("a request botocore cannot send")])
    commits = FencedCommits(client, "jobs", calls, clock)
    with pytest.raises(StoreError) as failed:
        await write(commits, "j1")
    assert str(failed.value) == "dynamodb-jobs: a request botocore cannot send"


# --- raising the fence (held since the mutation run of issue 28, docs/mutation.md) -----------
class ScriptedRaise(Scripted):
    """UpdateItem (a fence item's raise) answering from ``answers`` in turn, then landing."""

    def __init__(self, clock: Clock, answers: list[Exception | None], step_s: float) -> None:
        super().__init__(clock, answers, step_s)
        self.raised: list[str] = []

    def update_item(self, **request: Any) -> None:
        self.raised.append(request["Key"]["job_id"]["S"])
        self.clock.now += self.step_s
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


def update_conflict() -> ClientError:
    return ClientError({"Error": {"Code": "TransactionConflictException",
                                  "Message": "Transaction is ongoing for the item"}},
                       "UpdateItem")


async def test_a_raise_in_conflict_is_tried_for_exactly_the_give_up_time_then_fails(
        clock: Clock, calls: BlockingCalls) -> None:
    client = ScriptedRaise(clock, [update_conflict()] * 10, step_s=0.5)
    commits = FencedCommits(client, "jobs", calls, clock)
    with pytest.raises(StoreError) as failed:
        await asyncio.wait_for(commits.raise_fence(FENCE), ANSWER_S)
    assert str(failed.value) == ("dynamodb-jobs: fence item scheduler-fence-0 in "
                                 "transactions for 2 s")
    # Since the first try (at 100.0): 2.0 s later (the fourth answer) it is still tried;
    # past that (the fifth, at 102.5) it fails.
    assert len(client.raised) == 5


async def test_the_waits_between_raises_grow_with_each_conflict(
        clock: Clock, calls: BlockingCalls, waits: list[int]) -> None:
    client = ScriptedRaise(clock, [update_conflict()] * 3, step_s=0.0)
    await asyncio.wait_for(FencedCommits(client, "jobs", calls, clock).raise_fence(FENCE),
                           ANSWER_S)
    assert waits == [1, 2, 3]
    assert client.raised == ["scheduler-fence-0"] * 4


async def test_drain_waits_for_the_transaction_in_flight(
        clock: Clock, calls: BlockingCalls) -> None:
    client = Scripted(clock, [])
    client.go_on.clear()
    commits = FencedCommits(client, "jobs", calls, clock)
    written = asyncio.ensure_future(write(commits, "j1"))
    await asyncio.to_thread(client.called.wait, ANSWER_S)
    drained = asyncio.ensure_future(commits.drain())
    await asyncio.sleep(0.05)
    assert not drained.done()
    client.go_on.set()
    await asyncio.wait_for(drained, ANSWER_S)
    assert written.done() and written.result() == "landed"

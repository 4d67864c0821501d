"""The leader's fenced job writes on DynamoDB: per fence item, one transaction in flight at
a time, batched.

Every fenced write names its job's fence item in its transaction (a ConditionCheck;
job_manager/stores/fence.py). DynamoDB cancels a transaction that includes an item
another transaction in flight includes ("TransactionConflict"). Two writes fenced by one
item, in flight at once, would therefore cancel each other. So each fence item has one
committer: each TransactWriteItems holds the item's check and as many waiting writes as
fit. The committers of different items run side by side (docs/replicas.md, "Fence").
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from job_manager.stores.blocking import BlockingCalls
from job_manager.stores.errors import StoreError
from job_manager.stores.fence import Deposed, Fence, fence_item_keys

MAX_ACTIONS = 100  # DynamoDB's limit on one transaction, the fence check included
MAX_BATCH_BYTES = 2_000_000  # well under the transaction's 4 MB
GIVE_UP_S = 2.0  # a write cancelled by conflicts for this long fails
_BACKOFF_S = (0.005, 0.05)  # the first and the longest wait after a conflict

# A write's outcome from its own cancellation reasons (None: the transaction landed).
Settle = Callable[[list[dict[str, Any]] | None], object]


@dataclass
class FencedWrite:
    """One job write waiting for a transaction: its actions and the items they name."""

    fence: Fence
    actions: list[dict[str, Any]]
    keys: frozenset[str]
    settle: Settle
    answer: asyncio.Future[object]
    size_bytes: int = 0
    conflicted_since: float | None = None

    def conflicted_for(self, now: float) -> float:
        """How long this write has been in conflict, its first conflict being at ``now``
        when it had none before."""
        if self.conflicted_since is None:
            self.conflicted_since = now
        return now - self.conflicted_since


class FencedCommits:
    """The committers of one store's fenced writes, one per fence item."""

    def __init__(self, client: Any, table: str, calls: BlockingCalls,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._table = table
        self._calls = calls
        self._monotonic = monotonic
        self._committers: dict[str, _Committer] = {}

    async def write(self, fence: Fence, actions: list[dict[str, Any]], keys: frozenset[str],
                    settle: Settle, job_id: str | None = None) -> object:
        """Queue a write for the next transaction of ``job_id``'s fence item (by default
        the first of ``keys``); its outcome once it is known."""
        if self._calls.closed:
            raise StoreError("dynamodb-jobs: the store is closed")
        item = fence.item_of(min(keys) if job_id is None else job_id)
        committer = self._committers.get(item)
        if committer is None:
            committer = self._committers[item] = _Committer(
                item, self._client, self._table, self._calls, self._monotonic)
        return await committer.write(FencedWrite(fence, actions, keys, settle,
                                                 asyncio.get_running_loop().create_future(),
                                                 _size_bytes(actions)))

    async def drain(self) -> None:
        """Wait until the writes queued so far have their answers."""
        await asyncio.gather(*(c.drain() for c in list(self._committers.values())))

    async def raise_fence(self, fence: Fence) -> None:
        """Make every fence item name ``fence``'s holder at its epoch, before a new term
        reads a job: from then on no write of an earlier term lands. A transaction of an
        earlier term still in DynamoDB's hands holds its item, and the raise of that item
        waits for it (tried again after a conflict, for up to GIVE_UP_S). Deposed when
        an item already names a later epoch; raising it again is harmless."""
        await asyncio.gather(*(self._raise(fence, item)
                               for item in fence_item_keys(fence.items)))

    async def _raise(self, fence: Fence, item: str) -> None:
        request = {
            "TableName": self._table,
            "Key": {"job_id": {"S": item}},
            "UpdateExpression": "SET holder = :holder, epoch = :epoch",
            "ConditionExpression": "attribute_not_exists(epoch) OR epoch < :epoch OR "
                                   "(epoch = :epoch AND holder = :holder)",
            "ExpressionAttributeValues": {":holder": {"S": fence.holder},
                                          ":epoch": {"N": str(fence.epoch)}},
        }

        def update() -> str:
            try:
                self._client.update_item(**request)
            except ClientError as exc:
                code = _error_code(exc)
                if code == "ConditionalCheckFailedException":
                    return "later epoch"
                if code == "TransactionConflictException":
                    return "conflict"
                raise
            return "raised"

        since, conflicts = self._monotonic(), 0
        while (outcome := await self._calls.run(update)) == "conflict":
            conflicts += 1
            if self._monotonic() - since > GIVE_UP_S:
                raise StoreError(f"dynamodb-jobs: fence item {item} in transactions for "
                                 f"{GIVE_UP_S:g} s")
            await asyncio.sleep(_backoff_s(conflicts))
        if outcome == "later epoch":
            raise Deposed(fence)


class _Committer:
    """The writes fenced by one item: one transaction in flight at a time."""

    def __init__(self, item: str, client: Any, table: str, calls: BlockingCalls,
                 monotonic: Callable[[], float]) -> None:
        self._item = item
        self._client = client
        self._table = table
        self._calls = calls
        self._monotonic = monotonic
        self._pending: list[FencedWrite] = []
        self._committer: asyncio.Task[None] | None = None

    async def write(self, write: FencedWrite) -> object:
        self._pending.append(write)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        return await write.answer

    async def drain(self) -> None:
        if self._committer is not None:
            await asyncio.shield(self._committer)

    async def _commit_pending(self) -> None:
        conflicts = 0
        while self._pending:
            if conflicts:
                await asyncio.sleep(_backoff_s(conflicts))
            batch = self._next_batch()
            outcome = await self._commit(batch)
            if isinstance(outcome, ClientError) and _conflicted(outcome):
                conflicts += 1
                self._retry(batch)
                continue
            conflicts = 0
            if isinstance(outcome, ClientError):
                self._sort_out(batch, outcome)
            elif outcome is not None:
                _answer_each(batch, outcome)
            else:
                for write in batch:
                    _answer(write, _settled(write, None))

    def _next_batch(self) -> list[FencedWrite]:
        """The oldest write and those after it that fit its transaction; the rest wait.

        A write on an item an earlier waiting write names waits too, so writes to one
        job land in the order they were made.
        """
        fence = self._pending[0].fence
        batch: list[FencedWrite] = []
        rest: list[FencedWrite] = []
        taken, held_back = {self._item}, set[str]()
        actions, size = 1, 0
        for write in self._pending:
            fits = (write.fence == fence and not write.keys & (taken | held_back)
                    and actions + len(write.actions) <= MAX_ACTIONS
                    and (not batch or size + write.size_bytes <= MAX_BATCH_BYTES))
            if fits:
                batch.append(write)
                taken |= write.keys
                actions += len(write.actions)
                size += write.size_bytes
            else:
                rest.append(write)
                held_back |= write.keys
        self._pending = rest
        return batch

    async def _commit(self, batch: list[FencedWrite]) -> ClientError | StoreError | None:
        """Send the batch as one transaction: None when it landed, DynamoDB's error when
        it was cancelled, a StoreError for any other failure (throttled past botocore's
        retries, a 5xx, no connection), which every write of the batch then gets."""
        items = [fence_check(self._table, batch[0].fence, self._item)]
        items += [action for write in batch for action in write.actions]

        def transact() -> ClientError | None:
            try:
                self._client.transact_write_items(TransactItems=items)
            except ClientError as exc:
                if _error_code(exc) in _ANSWERED:
                    return exc
                raise
            return None

        try:
            return await self._calls.run(transact)
        except Exception as exc:  # noqa: BLE001 - every waiting caller must get an answer
            return exc if isinstance(exc, StoreError) else StoreError(f"dynamodb-jobs: {exc}")

    def _retry(self, batch: list[FencedWrite]) -> None:
        """Put a batch cancelled by a conflict back in front; a write in conflict for
        GIVE_UP_S fails."""
        now = self._monotonic()
        again = []
        for write in batch:
            if write.conflicted_for(now) > GIVE_UP_S:
                _answer(write, StoreError(
                    f"dynamodb-jobs: transaction conflicts for {GIVE_UP_S:g} s"))
            else:
                again.append(write)
        self._pending[:0] = again

    def _sort_out(self, batch: list[FencedWrite], error: ClientError) -> None:
        """Each write's outcome from a cancelled transaction's reasons (one per action,
        the fence check first); writes cancelled only by another's go in the next one."""
        reasons = cancellation_reasons(error)
        failure = StoreError(f"dynamodb-jobs: {_error_code(error)}: {error}")
        if len(reasons) != 1 + sum(len(write.actions) for write in batch):
            _answer_each(batch, failure)
            return
        if _code(reasons[0]) == "ConditionalCheckFailed":
            _answer_each(batch, Deposed(batch[0].fence))
            return
        again, at = [], 1
        for write in batch:
            own = reasons[at:at + len(write.actions)]
            at += len(write.actions)
            if all(_code(reason) == "None" for reason in own):
                again.append(write)
            else:
                _answer(write, _settled(write, own))
        if len(again) == len(batch):  # cancelled, and no action says why
            _answer_each(batch, failure)
            return
        self._pending[:0] = again


def fence_check(table: str, fence: Fence, item: str) -> dict[str, Any]:
    """The transaction item that holds a write to its fence item still naming its leader."""
    return {"ConditionCheck": {
        "TableName": table,
        "Key": {"job_id": {"S": item}},
        "ConditionExpression": "holder = :holder AND epoch = :epoch",
        "ExpressionAttributeValues": {":holder": {"S": fence.holder},
                                      ":epoch": {"N": str(fence.epoch)}},
    }}


# DynamoDB's answers that _commit passes on to be read, rather than failing the batch.
_ANSWERED = {"TransactionCanceledException", "TransactionConflictException"}


def _settled(write: FencedWrite, own: list[dict[str, Any]] | None) -> object:
    """The write's outcome, or the error it ends in; a reason other than its own
    condition failing is a StoreError."""
    if own is not None:
        other = [_code(r) for r in own if _code(r) not in ("None", "ConditionalCheckFailed")]
        if other:
            return StoreError(f"dynamodb-jobs: transaction cancelled: {', '.join(other)}")
    try:
        return write.settle(own)
    except Exception as exc:  # noqa: BLE001 - its caller gets it; the committer goes on
        return exc


def _answer(write: FencedWrite, outcome: object) -> None:
    if write.answer.done():
        return  # its caller went away, or it was answered already
    if isinstance(outcome, BaseException):
        write.answer.set_exception(outcome)
    else:
        write.answer.set_result(outcome)


def _answer_each(batch: list[FencedWrite], outcome: BaseException) -> None:
    for write in batch:
        _answer(write, outcome)


def _conflicted(error: ClientError) -> bool:
    if _error_code(error) == "TransactionConflictException":
        return True
    return any(_code(reason) == "TransactionConflict" for reason in cancellation_reasons(error))


def cancellation_reasons(error: ClientError) -> list[dict[str, Any]]:
    """A cancelled transaction's reasons, one per action in order; none for other errors."""
    reasons: Any = error.response.get("CancellationReasons") or []
    return list(reasons)


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _code(reason: dict[str, Any]) -> str:
    return str(reason.get("Code") or "None")


def _backoff_s(conflicts: int) -> float:
    low, high = _BACKOFF_S
    return random.uniform(low, min(high, low * 2 ** conflicts))


def _size_bytes(value: Any) -> int:
    """About the size of a request's items as sent: the lengths of their names and values."""
    if isinstance(value, dict):
        return sum(len(name) + _size_bytes(item) for name, item in value.items())
    if isinstance(value, list):
        return sum(_size_bytes(item) for item in value)
    if isinstance(value, (str, bytes)):
        return len(value)
    return 8

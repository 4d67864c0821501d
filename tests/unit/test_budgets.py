"""QPU-time budgets on a fake clock over a real SQLite store: periods, what a period's use
is, the refusal's words, and counting that goes on in memory (job_manager/budgets.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from common.identity import Principal, Role, fingerprint
from job_manager.budgets import Budget, BudgetBook, BudgetRules, Period
from job_manager.model import BackendTimestamps, JobRecord, JobStatus, new_job_id
from job_manager.stores.sqlite_job_store import SqliteJobStore
from tests.unit.stores import store

__all__ = ["store"]  # the fixture, shared (tests/unit/stores.py)

ALICE = Principal("alice", Role.DEVELOPER, fingerprint("token-alice"))
ROOT = Principal("root", Role.ADMIN, fingerprint("token-root"))
NOW = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)
SHOTS = {"value": 100}


def shots_of(record: JobRecord) -> int:
    return SHOTS["value"]


def ran(submitted_at: datetime, qpu_s: float, status: JobStatus = JobStatus.COMPLETED,
        owner: Principal = ALICE) -> JobRecord:
    start = submitted_at + timedelta(seconds=1)
    return JobRecord(
        job_id=new_job_id(), status=status, backend="qpu", owner_name=owner.name,
        owner_fingerprint=owner.fingerprint, role=owner.role, settings=b"", timeout_s=60,
        input_size_bytes=1, submitted_at=submitted_at, queued_at=submitted_at,
        dequeued_at=start, finished_at=start + timedelta(seconds=qpu_s + 1),
        backend_timestamps=BackendTimestamps(
            execution_started_at=start, execution_finished_at=start + timedelta(seconds=qpu_s)))


@pytest.mark.parametrize(("now", "start", "next_start"), [
    (datetime(2026, 12, 7, 9, 30, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC),
     datetime(2027, 1, 1, tzinfo=UTC)),
    (datetime(2026, 1, 31, 23, 59, 59, 999999, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC),
     datetime(2026, 2, 1, tzinfo=UTC)),
    (datetime(2028, 2, 29, tzinfo=UTC), datetime(2028, 2, 1, tzinfo=UTC),
     datetime(2028, 3, 1, tzinfo=UTC)),
])
def test_a_month_runs_from_its_first_day_to_the_next_months(
        now: datetime, start: datetime, next_start: datetime) -> None:
    assert (Period.MONTH.start(now), Period.MONTH.next_start(now)) == (start, next_start)


def test_a_day_is_a_utc_day_whatever_the_offset_it_is_read_in() -> None:
    tokyo = datetime(2026, 12, 7, 8, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=9)))
    assert Period.DAY.start(tokyo) == datetime(2026, 12, 7, tzinfo=UTC)
    assert Period.DAY.next_start(tokyo) == datetime(2026, 12, 8, tzinfo=UTC)


def test_a_users_own_budget_replaces_their_roles_and_admins_have_none_unless_set() -> None:
    rules = BudgetRules({Role.DEVELOPER: Budget(Period.DAY, shots=10)},
                        {"alice": Budget(Period.MONTH, qpu_seconds=60)})
    assert rules.of(ALICE) == Budget(Period.MONTH, qpu_seconds=60)
    assert rules.of(replace(ALICE, name="bob")) == Budget(Period.DAY, shots=10)
    assert rules.of(ROOT) is None
    assert not BudgetRules() and rules


async def test_a_periods_use_is_read_from_the_store_once_then_counted_in_memory(
        store: SqliteJobStore) -> None:
    SHOTS["value"] = 100
    await store.create(ran(NOW - timedelta(days=1), 30))
    await store.create(ran(NOW - timedelta(hours=1), 12.5, JobStatus.FAILED))
    await store.create(ran(datetime(2026, 11, 30, 23, 59, tzinfo=UTC), 1000))  # last month
    queued = replace(ran(NOW, 0), status=JobStatus.QUEUED, dequeued_at=None,
                     finished_at=None, backend_timestamps=BackendTimestamps())
    await store.create(queued)  # not run: no shots, no time
    book = BudgetBook(BudgetRules({Role.DEVELOPER: Budget(Period.MONTH, 60.0, 300)}), store,
                      shots_of)
    left = await book.left(ALICE, NOW)
    assert left is not None
    assert (left.spent_shots, left.spent_qpu_s) == (200, 42.5)
    assert left.resets_at == datetime(2027, 1, 1, tzinfo=UTC) and not left.spent
    assert book.known_left(ALICE.fingerprint, NOW) == left
    # From now on memory counts: a hand-over's shots, a finished job's reported time.
    handed = replace(queued, status=JobStatus.RUNNING, dequeued_at=NOW)
    book.handed_over(handed)
    book.finished(ran(NOW, 17.5))
    counted = book.known_left(ALICE.fingerprint, NOW)
    assert counted is not None and (counted.spent_shots, counted.spent_qpu_s) == (300, 60.0)
    assert counted.spent  # 300 of 300 shots, and 60 of 60 s
    # A hand-over no node received is undone, and so is its count.
    book.given_back(handed)
    back = book.known_left(ALICE.fingerprint, NOW)
    assert back is not None and back.spent_shots == 200


async def test_the_refusal_names_the_use_the_budget_and_the_reset(
        store: SqliteJobStore) -> None:
    SHOTS["value"] = 100
    await store.create(ran(NOW - timedelta(hours=1), 30))
    book = BudgetBook(BudgetRules({Role.DEVELOPER: Budget(Period.DAY, shots=150)}), store,
                      shots_of)
    left = await book.left(ALICE, NOW)
    assert left is not None and left.refusal(50) is None  # exactly the budget
    refusal = left.refusal(51)
    assert refusal is not None and refusal.key == "budget_spent"
    assert str(refusal) == ("this job would start past the budget of 150 shots per day: "
                            "100 used this day; it resets at 2026-12-08 00:00:00 UTC")
    seconds = BudgetBook(BudgetRules({Role.DEVELOPER: Budget(Period.DAY, qpu_seconds=30)}),
                         store, shots_of)
    spent = await seconds.left(ALICE, NOW)
    assert spent is not None and spent.spent
    refused = spent.refusal(1)
    assert refused is not None and "30 QPU seconds per day" in str(refused)
    assert "30.0 used" in str(refused)


async def test_a_new_period_is_counted_afresh(store: SqliteJobStore) -> None:
    SHOTS["value"] = 10
    await store.create(ran(NOW - timedelta(hours=1), 5))
    book = BudgetBook(BudgetRules({Role.DEVELOPER: Budget(Period.DAY, shots=10)}), store,
                      shots_of)
    left = await book.left(ALICE, NOW)
    assert left is not None and left.spent
    tomorrow = datetime(2026, 12, 8, tzinfo=UTC)
    assert book.known_left(ALICE.fingerprint, tomorrow) is None  # yesterday's count is stale
    fresh = await book.left(ALICE, tomorrow)
    assert fresh is not None and (fresh.spent_shots, fresh.spent) == (0, False)
    book.handed_over(ran(NOW - timedelta(hours=1), 5))  # a job of yesterday counts no more
    again = book.known_left(ALICE.fingerprint, tomorrow)
    assert again is not None and again.spent_shots == 0


async def test_no_budget_no_count(store: SqliteJobStore) -> None:
    book = BudgetBook(BudgetRules(), store, shots_of)
    assert await book.left(ALICE, NOW) is None
    book.handed_over(ran(NOW, 1))
    assert book.known_left(ALICE.fingerprint, NOW) is None


async def test_a_job_counts_in_the_period_it_ran_in_not_the_one_it_was_submitted_in(
        store: SqliteJobStore) -> None:
    SHOTS["value"] = 100
    yesterday = datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
    waited = replace(ran(yesterday, 5), dequeued_at=NOW - timedelta(minutes=5))
    await store.create(waited)  # submitted yesterday, run today (it waited for the reset)
    await store.create(ran(yesterday, 5))  # submitted and run yesterday
    two_days_ago = replace(ran(NOW - timedelta(days=2), 5), dequeued_at=NOW)
    await store.create(two_days_ago)  # waited more than a whole day: not looked for
    book = BudgetBook(BudgetRules({Role.DEVELOPER: Budget(Period.DAY, shots=1000)}), store,
                      shots_of)
    left = await book.left(ALICE, NOW)
    assert left is not None and left.spent_shots == 100
    assert Period.DAY.previous_start(NOW) == datetime(2026, 12, 6, tzinfo=UTC)
    assert Period.MONTH.previous_start(datetime(2026, 1, 15, tzinfo=UTC)) == datetime(
        2025, 12, 1, tzinfo=UTC)

"""The watchdog: one heap of deadlines on the monotonic clock, and one sleeper that wakes for
the earliest (job_manager/watchdog.py). The liveness phase decides what a due deadline
means; here only the keeping of time is held.

The deadlines are on a FakeClock; the sleeper's waits are real, kept short by lowering
MAX_SLEEP_S, and bounded so that a sleeper that never wakes fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from common.clock import FakeClock
from job_manager import watchdog
from job_manager.watchdog import RETRY_S, Watchdog

SHORT_S = 0.05  # a real wait the tests expect to end
PROMPT_S = 0.5  # well before any wait the tests expect not to end
BOUND_S = 2.0  # a sleeper still asleep then never wakes


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def due_jobs(dog: Watchdog) -> list[str]:
    return [due.job_id for due in dog.due()]


async def slept_s(dog: Watchdog) -> float:
    """How long (real seconds) one ``until_next`` slept; fails past BOUND_S."""
    start = time.monotonic()
    await asyncio.wait_for(dog.until_next(), BOUND_S)
    return time.monotonic() - start


def test_deadlines_due_at_one_instant_come_in_the_order_they_were_watched(
        clock: FakeClock) -> None:
    dog = Watchdog(clock)
    for job_id in ("first", "second", "third"):
        dog.watch_for(job_id, 5.0)
    clock.advance(5.0)
    assert due_jobs(dog) == ["first", "second", "third"]


def test_a_retried_deadline_is_due_again_retry_s_after_it_was_found_due(
        clock: FakeClock) -> None:
    dog = Watchdog(clock)
    dog.watch_for("job", 1.0, "watched")
    clock.advance(1.0)
    [due] = dog.due()
    dog.retry(due)
    clock.advance(RETRY_S - 0.001)
    assert dog.due() == []
    clock.advance(0.001)
    [again] = dog.due()
    assert (again.job_id, again.watched) == ("job", "watched")


async def test_with_nothing_watched_the_sleeper_wakes_after_max_sleep(
        clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog, "MAX_SLEEP_S", SHORT_S)
    assert SHORT_S <= await slept_s(Watchdog(clock)) < PROMPT_S


async def test_the_sleeper_wakes_at_the_earliest_deadline(
        clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog, "MAX_SLEEP_S", 60.0)
    dog = Watchdog(clock)
    dog.watch_for("soon", SHORT_S)
    dog.watch_for("later", 30.0)
    assert SHORT_S * 0.9 <= await slept_s(dog) < PROMPT_S


async def test_a_deadline_already_passed_wakes_the_sleeper_at_once(
        clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog, "MAX_SLEEP_S", 60.0)
    dog = Watchdog(clock)
    dog.watch_for("late", 1.0)
    clock.advance(10.0)
    assert await slept_s(dog) < PROMPT_S


async def test_a_far_deadline_is_slept_towards_at_most_max_sleep_at_a_time(
        clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog, "MAX_SLEEP_S", SHORT_S)
    dog = Watchdog(clock)
    dog.watch_for("far", 3600.0)
    assert SHORT_S <= await slept_s(dog) < PROMPT_S


async def test_an_earlier_deadline_watched_meanwhile_wakes_the_sleeper(
        clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog, "MAX_SLEEP_S", 60.0)
    dog = Watchdog(clock)
    dog.watch_for("later", 30.0)
    sleeper = asyncio.ensure_future(slept_s(dog))
    await asyncio.sleep(SHORT_S)
    dog.watch_for("sooner", 0.0)
    assert await sleeper < PROMPT_S


async def test_a_later_deadline_watched_meanwhile_lets_the_sleeper_sleep(
        clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchdog, "MAX_SLEEP_S", 60.0)
    dog = Watchdog(clock)
    dog.watch_for("soon", 4 * SHORT_S)
    sleeper = asyncio.ensure_future(slept_s(dog))
    await asyncio.sleep(SHORT_S)
    dog.watch_for("later", 30.0)
    assert await sleeper >= 4 * SHORT_S * 0.9

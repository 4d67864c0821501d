"""A replica's terms (scheduler/replication/replicas.py, docs/replicas.md): what a term's start,
recovery, second look at the store, watchdog and end leave behind, on a lease table in
memory and managers that do as told. tests/unit/test_failed_recovery.py holds a failed
recovery among replicas; tests/integration/test_replicas.py the same over real processes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from job_manager.manager import JobManager
from job_manager.stores import Fence
from leadership.lease import Lease
from scheduler.operations.metrics import Metrics
from scheduler.replication.replicas import Replicas
from tests.unit.test_lease import DURATION_S, RENEW_S, Clock, Table
from tests.unit.test_replica_calls import turns


class Watchdog:
    """Runs until told to fail."""

    def __init__(self) -> None:
        self.running = False
        self.failure: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        self.running = True
        try:
            await self.failure
        finally:
            self.running = False


class Manager:
    """A JobManager whose recovery and reading ahead are counted, and fail when told."""

    def __init__(self, fence: Fence | None, recovery_fails: bool = False,
                 reading_ahead_fails: bool = False) -> None:
        self.fence = fence
        self.watchdog = Watchdog()
        self.recoveries = 0
        self.read_aheads = 0
        self.tables: list[Any] = []
        self.shut = False
        self.recovery_fails = recovery_fails
        self.reading_ahead_fails = reading_ahead_fails


    def watch_deadlines(self) -> Any:
        return self.watchdog.run()

    async def recover(self) -> None:
        self.recoveries += 1
        if self.recovery_fails:
            raise RuntimeError("a record recovery cannot take")

    async def prefetch_programs(self) -> int:
        self.read_aheads += 1
        if self.reading_ahead_fails:
            raise RuntimeError("the store is down")
        return 0

    def use_backends(self, table: Any) -> None:
        self.tables.append(table)

    def shutdown(self) -> None:
        self.shut = True


class Made(list[Manager]):
    """The managers a Replicas made, in order; each made as ``settings`` say."""

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = settings

    def __call__(self, fence: Fence | None) -> JobManager:
        self.append(Manager(fence, **self.settings))
        return cast(JobManager, self[-1])


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def among_replicas(made: Made, table: Table | None = None, settle_s: float = 0.0,
                   ) -> tuple[Replicas, Lease, Metrics]:
    clock = Clock()
    lease = Lease(table or Table(), "a", clock, DURATION_S, RENEW_S)
    metrics = Metrics()
    return (Replicas(made, metrics, monotonic=clock, lease=lease, settle_s=settle_s), lease,
            metrics)


async def test_a_standalone_start_whose_recovery_fails_fails() -> None:
    made = Made(recovery_fails=True)
    replicas = Replicas(made, Metrics(), monotonic=Clock())
    with pytest.raises(RuntimeError, match="a record recovery cannot take"):
        await replicas.start()
    assert not replicas.ready


async def test_a_standalone_replica_serves_once_recovered_unfenced() -> None:
    made = Made()
    metrics = Metrics()
    replicas = Replicas(made, metrics, monotonic=Clock())
    await replicas.start()
    assert replicas.ready and replicas.manager is cast(JobManager, made[-1])
    assert made[-1].fence is None and made[-1].recoveries == 1
    assert sample(metrics, "mqc3_replica_leading") == 1.0
    assert sample(metrics, "mqc3_lease_epoch") == 0.0


async def test_a_term_is_fenced_at_its_epoch_and_counted_once_recovered() -> None:
    made = Made()
    replicas, _, metrics = among_replicas(made)
    assert made[0].fence == Fence("a", 0)  # a follower's: never holds
    await replicas.start()
    assert replicas.ready and replicas.manager is cast(JobManager, made[1])
    assert made[1].fence == Fence("a", 1)
    assert sample(metrics, "mqc3_lease_takeovers_total") == 1.0
    assert sample(metrics, "mqc3_replica_leading") == 1.0
    assert sample(metrics, "mqc3_lease_epoch") == 1.0
    recovered_s = sample(metrics, "mqc3_recovery_seconds")
    assert recovered_s is not None and 0.0 <= recovered_s < 60.0  # a duration, not a time


async def test_a_replica_that_steps_down_follows_fenced_at_epoch_0_and_says_so() -> None:
    made = Made()
    replicas, lease, metrics = among_replicas(made)
    await replicas.start()
    lease.deposed()
    assert not replicas.ready and replicas.manager is cast(JobManager, made[2])
    assert made[1].shut
    assert made[2].fence == Fence("a", 0)  # can never write
    assert sample(metrics, "mqc3_replica_leading") == 0.0
    assert sample(metrics, "mqc3_lease_epoch") == 0.0


async def test_among_replicas_a_settling_time_of_0_means_no_second_look() -> None:
    made = Made()
    replicas, _, _ = among_replicas(made, settle_s=0.0)
    await replicas.start()
    await turns(lambda: made[1].read_aheads == 1)
    for _ in range(10):
        await asyncio.sleep(0)
    assert (made[1].recoveries, made[1].read_aheads) == (1, 1)


async def test_a_new_leader_looks_at_the_store_again_once_it_settled() -> None:
    made = Made()
    replicas, _, _ = among_replicas(made, settle_s=0.01)
    await replicas.start()
    term = made[1]
    await turns(lambda: term.read_aheads == 2, sleep_s=0.005)
    assert term.recoveries == 2  # the second look, then its programs read too


async def test_standalone_reads_ahead_once_with_no_second_look() -> None:
    made = Made()
    replicas = Replicas(made, Metrics(), monotonic=Clock(), settle_s=0.01)
    await replicas.start()
    await turns(lambda: made[-1].read_aheads == 1)
    await asyncio.sleep(0.05)  # past the settling time: still no second look
    assert (made[-1].recoveries, made[-1].read_aheads) == (1, 1)


async def test_reading_ahead_that_fails_is_logged_and_the_term_serves_on(
        caplog: pytest.LogCaptureFixture) -> None:
    made = Made(reading_ahead_fails=True)
    replicas = Replicas(made, Metrics(), monotonic=Clock())
    await replicas.start()
    await turns(lambda: made[-1].read_aheads == 1)
    await turns(lambda: any("reading ahead" in r.getMessage() for r in caplog.records))
    assert replicas.ready
    [logged] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert logged.getMessage() == (
        "reading ahead after the recovery failed; hand-overs read instead")


async def test_the_backend_table_reaches_this_terms_manager_and_the_next_ones() -> None:
    made = Made()
    replicas, _, _ = among_replicas(made)
    table = object()
    replicas.use_backends(cast(Any, table))
    assert made[0].tables == [table]
    await replicas.start()
    assert made[1].tables == [table]


async def test_the_watchdog_of_the_serving_manager_runs_and_its_failure_is_raised() -> None:
    made = Made()
    replicas, _, _ = among_replicas(made)
    watching = asyncio.ensure_future(replicas.watch_jobs())
    await turns(lambda: made[0].watchdog.running)
    await replicas.start()  # a new term: its manager's watchdog now
    await turns(lambda: made[1].watchdog.running and not made[0].watchdog.running)
    made[1].watchdog.failure.set_exception(RuntimeError("the watchdog broke"))
    with pytest.raises(RuntimeError, match="the watchdog broke"):
        await asyncio.wait_for(watching, 10)  # raised for the supervisor to restart it


async def test_a_stop_releases_the_lease_for_good_and_ends_the_term() -> None:
    made = Made()
    table = Table()
    replicas, lease, _ = among_replicas(made, table, settle_s=30.0)
    await replicas.start()
    term = made[1]
    await replicas.stop()
    assert not lease.leading and term.shut
    assert table.record is not None and table.record.released
    await lease.step()
    assert not lease.leading  # for good: never taken again
    assert replicas.manager.shut  # type: ignore[attr-defined]


async def test_the_lease_is_kept_by_rounds_of_its_renewal_period() -> None:
    made = Made()
    table = Table()
    clock = Clock()
    lease = Lease(table, "a", clock, 1000.0, 0.01)  # rounds of 10 ms; it lasts long
    replicas = Replicas(made, Metrics(), monotonic=clock, lease=lease, settle_s=0)
    keeping = asyncio.ensure_future(replicas.keep_lease())
    try:
        await turns(lambda: replicas.ready, sleep_s=0.01)  # its first round took it
        await turns(lambda: table.writes >= 3, sleep_s=0.01)  # and the next renewed it
    finally:
        keeping.cancel()


async def test_a_new_leader_looks_again_two_seconds_after_its_recovery(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/replicas.md: the status index shows a job the last leader wrote just before it
    # fell within that time. The default is the one the scheduler runs with.
    asked: list[float] = []
    sleep = asyncio.sleep

    async def recorded(delay: float) -> None:
        if delay:
            asked.append(delay)
        await sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recorded)
    made = Made()
    clock = Clock()
    lease = Lease(Table(), "a", clock, DURATION_S, RENEW_S)
    replicas = Replicas(made, Metrics(), monotonic=clock, lease=lease)
    await replicas.start()
    await turns(lambda: made[1].recoveries == 2)
    assert asked == [2.0]


async def test_a_recovery_is_timed_on_the_clock_the_replicas_were_given() -> None:
    clock = Clock()
    metrics = Metrics()

    class Recovering(Manager):
        async def recover(self) -> None:
            await super().recover()
            clock.now += 7.0  # seven seconds of the given clock, none of the system's

    replicas = Replicas(lambda fence: cast(JobManager, Recovering(fence)), metrics,
                        monotonic=clock)
    await replicas.start()
    assert sample(metrics, "mqc3_recovery_seconds") == 7.0

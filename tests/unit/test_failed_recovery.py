"""A leader whose recovery fails gives the lease up for real (issue 27, item 2;
docs/replicas.md, "What happens on each failure").

The release is written even though giving the lease up ends the very term that is writing
it, another replica can take the lease at once, and this one does not take it straight
back: it waits a lease's duration first, so a record that fails every recovery does not
keep the lease in a loop of takeovers. At start-up the failure is logged and the replica
follows; the start itself does not die of a cancellation.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from job_manager.manager import JobManager
from leadership.lease import Lease
from scheduler.operations.metrics import Metrics
from scheduler.replication.replicas import Replicas
from tests.unit.test_lease import DURATION_S, RENEW_S, Clock, Table


class SlowTable(Table):
    """A table whose calls take a moment, as a real one's do (a cancel can land in them)."""

    async def _reach(self) -> None:
        await asyncio.sleep(0.001)
        await super()._reach()


class Watchdog:
    async def run(self) -> None:
        await asyncio.Event().wait()


class FailingRecovery:
    """A JobManager whose recovery fails (a record it cannot take, the store down)."""

    def __init__(self, fails: bool) -> None:
        self.fails = fails
        self.recoveries = 0
        self.watchdog = Watchdog()


    def watch_deadlines(self) -> Any:
        return self.watchdog.run()

    async def recover(self) -> None:
        self.recoveries += 1
        await asyncio.sleep(0)
        if self.fails:
            raise RuntimeError("a record recovery cannot take")

    async def prefetch_programs(self) -> int:
        return 0

    def use_backends(self, table: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass


def replicas(table: SlowTable, clock: Clock, name: str, fails: bool) -> tuple[Replicas, Lease]:
    lease = Lease(table, name, clock, DURATION_S, RENEW_S, (f"{name}:8082", f"{name}:8081"))
    managers: list[FailingRecovery] = []

    def make(fence: Any) -> JobManager:
        managers.append(FailingRecovery(fails and fence is not None and fence.epoch > 0))
        return cast(JobManager, managers[-1])

    made = Replicas(make, Metrics(), monotonic=clock, lease=lease, settle_s=0)
    made.managers = managers  # type: ignore[attr-defined]
    return made, lease


async def test_a_failed_recovery_at_start_releases_the_lease_and_follows() -> None:
    table, clock = SlowTable(), Clock()
    a, lease = replicas(table, clock, "a", fails=True)
    await a.start()  # no CancelledError: the start goes on as a follower
    assert not lease.leading and not a.ready
    assert table.record is not None and table.record.released  # written, not cancelled


async def test_another_replica_takes_the_lease_at_once_and_the_failed_one_waits() -> None:
    table, clock = SlowTable(), Clock()
    a, a_lease = replicas(table, clock, "a", fails=True)
    await a.start()
    await a_lease.step()  # a's next round: it does not take the lease straight back
    assert not a_lease.leading
    b, b_lease = replicas(table, clock, "b", fails=False)
    await b.start()
    assert b_lease.leading and b.ready
    assert table.record is not None and table.record.holder == "b"


async def test_a_lone_replica_tries_again_only_after_a_lease_duration() -> None:
    table, clock = SlowTable(), Clock()
    a, lease = replicas(table, clock, "a", fails=True)
    await a.start()
    tries = sum(m.recoveries for m in a.managers)  # type: ignore[attr-defined]
    for _ in range(3):
        clock.now += RENEW_S
        await lease.step()
        await asyncio.sleep(0.01)
    assert sum(m.recoveries for m in a.managers) == tries  # type: ignore[attr-defined]
    clock.now += DURATION_S
    await lease.step()
    for _ in range(10):
        await asyncio.sleep(0.01)
    assert sum(m.recoveries for m in a.managers) == tries + 1  # type: ignore[attr-defined]
    assert table.record is not None and table.record.released  # and released again

"""Health's view of the stores (scheduler/operations/health.py,
scheduler/operations/store_monitor.py) on a clock that moves only when told: how long the
stores have failed and how long they have been idle are read from the clock the service
was given, never from the system's."""

from __future__ import annotations

from common.clock import FakeClock
from scheduler.operations.health import Health
from scheduler.operations.metrics import Metrics
from scheduler.operations.store_monitor import StoreMonitor

UNHEALTHY_AFTER_S = 30.0


async def _probe() -> None:
    pass


async def test_stores_failing_past_the_allowed_time_turn_health_not_serving() -> None:
    clock = FakeClock()
    monitor = StoreMonitor(Metrics(), clock.monotonic)
    health = Health(monitor, _probe, UNHEALTHY_AFTER_S)
    await health.ready()
    assert health.serving
    monitor.outcome("results", "upload_result", False)
    clock.advance(UNHEALTHY_AFTER_S - 1)
    health.update()
    assert monitor.failing_for_s() == UNHEALTHY_AFTER_S - 1 and health.serving
    clock.advance(1)
    health.update()
    assert not health.serving
    monitor.outcome("results", "upload_result", True)
    health.update()
    assert monitor.failing_for_s() == 0.0 and health.serving


def test_a_store_is_quiet_for_as_long_as_the_given_clock_has_moved_since_its_last_call() -> None:
    clock = FakeClock()
    monitor = StoreMonitor(Metrics(), clock.monotonic)
    assert monitor.quiet_for_s() == clock.monotonic()  # no call yet: idle, probed at once
    monitor.outcome("results", "upload_result", True)
    assert monitor.quiet_for_s() == 0.0
    clock.advance(4.5)
    assert monitor.quiet_for_s() == 4.5

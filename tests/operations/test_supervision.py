"""Each background loop of a real scheduler, killed: health says so, and it comes back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import scheduler_in
from tests.helpers import TokenDatabase

LOOPS = ["watchdog", "backend-reload", "health", "housekeeping", "free-space", "token-listing"]


async def test_every_background_loop_killed_is_restarted_and_health_follows(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase) -> None:
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        scheduler = running.scheduler
        assert scheduler.health.serving
        for name in LOOPS:
            killed = scheduler.supervisor.task(name)
            killed.cancel()
            # The supervisor hears of it once the cancel has reached the loop's await
            # point (a few turns of the event loop when that is a store call's task).
            async with asyncio.timeout(3):
                while name not in scheduler.supervisor.failing:
                    await asyncio.sleep(0)
            assert not scheduler.health.serving, f"health SERVING with {name} dead"
            async with asyncio.timeout(3):
                while scheduler.supervisor.task(name) is killed:
                    await asyncio.sleep(0.05)
            assert not scheduler.supervisor.task(name).done()
        async with asyncio.timeout(10):  # each runs well again for a while: SERVING again
            while not scheduler.health.serving:
                await asyncio.sleep(0.1)
        assert scheduler.supervisor.failing == []

"""Background loops never die silently: each kind of death is logged, named, and restarted."""

from __future__ import annotations

import asyncio

import pytest

from common.supervisor import Supervisor


class Loops:
    """Loops whose next run dies as told, counting their starts."""

    def __init__(self) -> None:
        self.starts = 0
        self.deaths: list[str] = []  # what the next runs do: "raise", "return"; then run on

    async def loop(self) -> None:
        self.starts += 1
        if self.deaths:
            death = self.deaths.pop(0)
            if death == "raise":
                raise RuntimeError("a bug in the loop")
            return
        await asyncio.Event().wait()


async def _until(check: object, timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("death", ["raise", "return", "cancelled"])
async def test_a_loop_that_dies_is_named_restarted_and_then_healthy_again(
        death: str, caplog: pytest.LogCaptureFixture) -> None:
    changes: list[list[str]] = []
    supervisor = Supervisor(lambda: changes.append(supervisor.failing), first_pause_s=0.05,
                            healthy_after_s=0.2)
    loops = Loops()
    if death != "cancelled":
        loops.deaths.append(death)
    supervisor.run("watchdog", loops.loop)
    await asyncio.sleep(0.01)
    if death == "cancelled":
        supervisor.task("watchdog").cancel()
    await _until(lambda: supervisor.failing == ["watchdog"])
    await _until(lambda: loops.starts == 2)  # restarted after its pause
    await _until(lambda: supervisor.failing == [])  # and healthy once it kept running
    assert changes == [["watchdog"], []]
    assert any("watchdog" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    await supervisor.stop()


async def test_a_loop_that_keeps_dying_waits_longer_each_time() -> None:
    supervisor = Supervisor(first_pause_s=0.05, max_pause_s=0.2, healthy_after_s=10)
    loops = Loops()
    loops.deaths.extend(["raise"] * 4)
    supervisor.run("reload", loops.loop)
    started = asyncio.get_running_loop().time()
    await _until(lambda: loops.starts == 5, timeout_s=3)
    # Pauses 0.05, 0.1, 0.2, 0.2: the bound holds, and each death waited.
    assert asyncio.get_running_loop().time() - started >= 0.5
    assert supervisor.failing == ["reload"]
    await supervisor.stop()


async def test_stop_ends_every_loop_and_restarts_none() -> None:
    supervisor = Supervisor(first_pause_s=0.01)
    loops = Loops()
    supervisor.run("a", loops.loop)
    supervisor.run("b", loops.loop)
    await asyncio.sleep(0.01)
    await supervisor.stop()
    await asyncio.sleep(0.05)
    assert loops.starts == 2
    assert supervisor.task("a").done() and supervisor.task("b").done()
    assert supervisor.failing == []

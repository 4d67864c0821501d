"""The lease item's turns (common/item_gate.py): the lease's writes go first, and a job
transaction in flight that never ends holds them back only for the gate's patience."""

from __future__ import annotations

import asyncio

from common.item_gate import ItemGate


async def test_a_lease_write_goes_before_every_job_transaction_waiting() -> None:
    gate = ItemGate(patience_s=60)
    order: list[str] = []
    first_in = asyncio.Event()
    first_done = asyncio.Event()

    async def transaction(name: str, hold: asyncio.Event | None = None) -> None:
        async with gate.transaction():
            order.append(name)
            if hold is not None:
                first_in.set()
                await hold.wait()

    async def lease_write() -> None:
        async with gate.lease_write():
            order.append("lease")

    first = asyncio.create_task(transaction("job-1", first_done))
    await first_in.wait()
    waiting = [asyncio.create_task(transaction(f"job-{n}")) for n in (2, 3)]
    await asyncio.sleep(0)  # they queue at the gate
    lease = asyncio.create_task(lease_write())
    await asyncio.sleep(0)
    first_done.set()
    await asyncio.gather(first, lease, *waiting)
    assert order == ["job-1", "lease", "job-2", "job-3"]


async def test_a_lease_write_does_not_wait_for_a_hung_transaction() -> None:
    gate = ItemGate(patience_s=0.01)
    inside = asyncio.Event()
    never = asyncio.Event()

    async def hung() -> None:
        async with gate.transaction():
            inside.set()
            await never.wait()

    stuck = asyncio.create_task(hung())
    await inside.wait()
    async with gate.lease_write():
        assert not stuck.done()  # written beside it
    stuck.cancel()
    await asyncio.gather(stuck, return_exceptions=True)
    assert await gate.transaction_ended() is False  # none in flight now

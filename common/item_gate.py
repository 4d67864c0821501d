"""Turns on the lease item between one process's lease writes and its job transactions.

DynamoDB refuses a write on an item that a transaction in flight includes, and every
fenced job transaction includes the lease item (docs/replicas.md, "Fence"). So the two
take turns here, but not as equals: a lease write never queues behind job transactions
waiting, and waits for the one in flight only ``patience_s``. Past that it writes anyway:
a transaction whose answer is late has long left DynamoDB's hands, and one still in them
refuses the write with a conflict, after which the write waits for it (it could not land
before it anyway). A renewal must never miss its deadline behind a hung job write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ItemGate:
    """One job transaction at a time; lease writes first, and never stuck behind one."""

    def __init__(self, patience_s: float = 0.1) -> None:
        self.patience_s = patience_s
        self._transactions = asyncio.Lock()  # one job transaction at a time
        self._in_flight: asyncio.Event | None = None  # set when the one in flight ends
        self._lease_writes = 0
        self._no_lease_write = asyncio.Event()
        self._no_lease_write.set()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """A job transaction's turn: after the one before it and every lease write waiting."""
        async with self._transactions:
            while self._lease_writes:
                await self._no_lease_write.wait()
            ended = self._in_flight = asyncio.Event()
            try:
                yield
            finally:
                ended.set()
                self._in_flight = None

    @asynccontextmanager
    async def lease_write(self) -> AsyncIterator[None]:
        """A lease write's turn: at once, or when the transaction in flight ends, or after
        ``patience_s`` of waiting for it, whichever comes first."""
        self._lease_writes += 1
        self._no_lease_write.clear()
        try:
            in_flight = self._in_flight
            if in_flight is not None:
                try:
                    await asyncio.wait_for(in_flight.wait(), self.patience_s)
                except TimeoutError:
                    pass  # late: write beside it (docs/replicas.md)
            yield
        finally:
            self._lease_writes -= 1
            if not self._lease_writes:
                self._no_lease_write.set()

    async def transaction_ended(self) -> bool:
        """For a lease write refused for a conflict: wait for the job transaction in flight
        to end, and say whether there was one (none starts while a lease write waits)."""
        in_flight = self._in_flight
        if in_flight is None:
            return False
        await in_flight.wait()
        return True

"""One leader among replicas, by a lease held in a single record (docs/replicas.md).

The record names its holder, an epoch and a version. The holder renews it by writing a
new version, conditional on the version it wrote last. Another replica takes it only
after seeing one version unchanged for the lease's duration on its own monotonic clock
(no wall clock is compared across machines), or at once when the holder released it.
Each takeover raises the epoch; the leader's job writes are conditional on its epoch
(the fence), so a leader that was deposed while asleep changes no job when it wakes.

A leader steps down by itself once it has gone ``duration - renew_every`` without a
successful renewal: before anyone else can have seen its last version lapse.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class LeaseRecord:
    """The lease as stored: who holds it, at which epoch, and where it answers."""

    holder: str
    epoch: int
    version: str
    submission_address: str = ""  # host:port of the holder's submission port
    execution_address: str = ""  # host:port of the holder's execution port
    released: bool = False  # let go on purpose: anyone may take it at once


class LeaseUnreachable(Exception):
    """The lease's record could not be read or written; the outcome is unknown."""


class LeaseTable(Protocol):
    """Where the lease's record lives; every write is conditional."""

    async def read(self) -> LeaseRecord | None:
        """The record, read strongly consistently; None when there is none."""
        ...

    async def create(self, record: LeaseRecord) -> bool:
        """Write ``record`` if there is no record yet; whether it was written."""
        ...

    async def replace(self, record: LeaseRecord, expected_version: str) -> bool:
        """Write ``record`` if the stored version is ``expected_version``; whether it was."""
        ...


class Lease:
    """This replica's side of the lease: try to take it, renew it, give it up."""

    def __init__(self, table: LeaseTable, me: str, monotonic: Callable[[], float],
                 duration_s: float, renew_every_s: float,
                 addresses: tuple[str, str] = ("", "")) -> None:
        if not 0 < renew_every_s < duration_s:
            raise ValueError("a lease must be renewed more often than it lasts")
        self._table = table
        self.me = me
        self._monotonic = monotonic
        self.duration_s = duration_s
        self.renew_every_s = renew_every_s
        self._addresses = addresses  # written with each renewal: where this replica answers
        self._mine: LeaseRecord | None = None  # the record as last written, while leading
        self._valid_until = 0.0
        self.current: LeaseRecord | None = None  # the record as last seen
        self._seen_version = ""
        self._seen_since = 0.0
        self._listeners: list[Callable[[bool], None]] = []  # told of each change of leading
        self._retired = False  # released for good (a stop): never taken again
        self._resting_until = 0.0  # monotonic time before which this replica takes nothing
        self._round = asyncio.Lock()  # one round at a time (the loop's, or one asked for)

    def advertise(self, submission_address: str, execution_address: str) -> None:
        """Where this replica's ports answer (``host:port``), known once they are bound:
        written with the next take or renewal, for the other replicas to pass calls to."""
        self._addresses = (submission_address, execution_address)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Tell ``listener`` of each change of leading: True on a takeover, False on a
        step-down."""
        self._listeners.append(listener)

    @property
    def leading(self) -> bool:
        """Whether this replica holds the lease (and has not let its hold lapse)."""
        return self._mine is not None

    def holds(self, epoch: int) -> bool:
        """Whether this replica leads at ``epoch`` and its own clock says the hold has not
        lapsed yet: asked before a job write that carries no fence check (docs/replicas.md)."""
        mine = self._mine
        return mine is not None and mine.epoch == epoch and self._monotonic() < self._valid_until

    @property
    def epoch(self) -> int:
        """The epoch this replica leads at; 0 when it does not lead."""
        return self._mine.epoch if self._mine is not None else 0

    def leader(self) -> LeaseRecord | None:
        """The record of the replica that leads, as far as this one knows; None when none does."""
        if self._mine is not None:
            return self._mine
        current = self.current
        if current is None or current.released or current.holder == self.me:
            return None
        if self._monotonic() - self._seen_since >= self.duration_s:
            return None  # not renewed within its duration: lapsed
        return current

    async def step(self) -> None:
        """One round: the leader renews; another replica watches and takes a lapsed lease."""
        async with self._round:
            await self._step()

    async def _step(self) -> None:
        now = self._monotonic()
        if self._mine is not None and now >= self._valid_until:
            self._lose("not renewed in time")
        if self._mine is not None:
            await self._renew(self._mine, now)
        if self._mine is None:
            await self._watch(now)

    def deposed(self) -> None:
        """A fenced write was refused: another replica has taken the lease. Step down now."""
        if self._mine is not None:
            self._lose("a fenced write was refused")

    async def release(self, for_good: bool = False) -> None:
        """Let the lease go at once, so another replica takes it now; ``for_good`` (a
        stop): this replica never takes it again. Waits for a round under way (a renewal
        in flight would otherwise write a newer version than the one released)."""
        self._retired = self._retired or for_good
        async with self._round:
            mine = self._mine
            if mine is None:
                return
            self._lose("released")
            try:
                await self._bounded(self._table.replace(
                    replace(mine, version=_version(), released=True), mine.version))
            except LeaseUnreachable as exc:
                log.warning("the lease could not be released (it lapses instead): %s", exc)

    async def step_aside(self) -> None:
        """Let the lease go after a term that failed (its recovery): released at once, and
        not taken again for one lease's duration, so that another replica can take it
        rather than this one failing the same way in a loop of takeovers."""
        self._resting_until = self._monotonic() + self.duration_s
        await self.release()

    async def _renew(self, mine: LeaseRecord, started: float) -> None:
        renewed = replace(mine, version=_version(), submission_address=self._addresses[0],
                          execution_address=self._addresses[1])
        try:
            written = await self._bounded(self._table.replace(renewed, mine.version))
        except LeaseUnreachable as exc:
            if self._monotonic() >= self._valid_until:
                self._lose(f"not renewed in time ({exc})")
            return
        if self._mine is not mine:
            return  # released meanwhile
        if not written:
            self._lose("taken by another replica")
            return
        self._mine = self.current = renewed
        self._valid_until = started + self.duration_s - self.renew_every_s

    async def _watch(self, now: float) -> None:
        try:
            current = await self._bounded(self._table.read())
        except LeaseUnreachable as exc:
            log.warning("the lease could not be read: %s", exc)
            return
        if current is None:
            if not self._retired and now >= self._resting_until:
                await self._take(None, now, "a new lease")
            return
        if current.version != self._seen_version:
            self._seen_version, self._seen_since = current.version, now
        self.current = current
        if self._retired or now < self._resting_until:
            return
        if current.released:
            await self._take(current, now, f"released by {current.holder}")
        elif current.holder == self.me:  # no one else took it since our step-down
            await self._take(current, now, "ours before a step-down")
        elif now - self._seen_since >= self.duration_s:
            await self._take(current, now, f"lapsed under {current.holder}")

    async def _take(self, current: LeaseRecord | None, started: float, how: str) -> None:
        taken = LeaseRecord(self.me, (current.epoch if current else 0) + 1, _version(),
                            *self._addresses)
        try:
            written = await self._bounded(
                self._table.create(taken) if current is None
                else self._table.replace(taken, current.version))
        except LeaseUnreachable as exc:
            log.warning("the lease could not be taken: %s", exc)
            return
        if not written:
            return  # another replica was first; the next round sees it
        self._mine = self.current = taken
        self._valid_until = started + self.duration_s - self.renew_every_s
        log.warning("this replica leads now (epoch %d, %s)", taken.epoch, how)
        self._tell(True)

    async def _bounded(self, call: Awaitable[T]) -> T:
        """A table call that takes no longer than one round: a hung call is a failed one."""
        try:
            return await asyncio.wait_for(call, self.renew_every_s)
        except TimeoutError:
            raise LeaseUnreachable(f"no answer within {self.renew_every_s:g} s") from None

    def _lose(self, why: str) -> None:
        mine = self._mine
        assert mine is not None
        self._mine = None
        self._seen_version = ""
        log.warning("this replica no longer leads (epoch %d): %s", mine.epoch, why)
        self._tell(False)

    def _tell(self, leading: bool) -> None:
        for listener in self._listeners:
            listener(leading)


def _version() -> str:
    return uuid.uuid4().hex

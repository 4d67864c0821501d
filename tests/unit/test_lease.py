"""The leader lease (leadership/lease.py), on a table in memory and a clock that moves when told.

Each test holds one rule of docs/replicas.md: one holder at a time, takeover only after
the lease visibly lapsed on the taker's own clock, each takeover a new epoch, a leader
that cannot renew steps down before anyone could take over, a release hands over at once.
"""

from __future__ import annotations

import asyncio

import pytest

from leadership.lease import Lease, LeaseRecord, LeaseUnreachable

DURATION_S = 6.0
RENEW_S = 1.5


class Table:
    """A LeaseTable in memory; ``down`` makes every call fail, ``hang`` never answer."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.down = False
        self.hang = False
        self.writes = 0

    async def _reach(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.down:
            raise LeaseUnreachable("down")

    async def read(self) -> LeaseRecord | None:
        await self._reach()
        return self.record

    async def create(self, record: LeaseRecord) -> bool:
        await self._reach()
        if self.record is not None:
            return False
        self.record = record
        self.writes += 1
        return True

    async def replace(self, record: LeaseRecord, expected_version: str) -> bool:
        await self._reach()
        if self.record is None or self.record.version != expected_version:
            return False
        self.record = record
        self.writes += 1
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table() -> Table:
    return Table()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def replica(table: Table, clock: Clock, name: str) -> Lease:
    lease = Lease(table, name, clock, DURATION_S, RENEW_S, (f"{name}:8082", f"{name}:8081"))
    lease.changes = []  # type: ignore[attr-defined]
    lease.on_change(lease.changes.append)  # type: ignore[attr-defined]
    return lease


async def test_the_first_replica_on_an_empty_table_leads_at_epoch_one(
        table: Table, clock: Clock) -> None:
    a, b = replica(table, clock, "a"), replica(table, clock, "b")
    await a.step()
    await b.step()
    assert a.leading and a.epoch == 1 and a.changes == [True]  # type: ignore[attr-defined]
    assert not b.leading and b.epoch == 0
    leader = b.leader()
    assert leader is not None and leader.holder == "a"
    assert leader.submission_address == "a:8082" and leader.execution_address == "a:8081"


async def test_a_renewed_lease_is_never_taken(table: Table, clock: Clock) -> None:
    a, b = replica(table, clock, "a"), replica(table, clock, "b")
    await a.step()
    for _ in range(20):  # 30 s, five times the duration, renewed all along
        clock.now += RENEW_S
        await a.step()
        await b.step()
        assert a.leading and not b.leading
    assert a.epoch == 1


async def test_a_lapsed_lease_is_taken_only_after_its_duration_on_the_takers_clock(
        table: Table, clock: Clock) -> None:
    a, b = replica(table, clock, "a"), replica(table, clock, "b")
    await a.step()
    await b.step()  # b sees a's version now
    clock.now += DURATION_S - 0.01  # a is silent (dead), but not for long enough yet
    await b.step()
    assert not b.leading
    clock.now += 0.01
    await b.step()
    assert b.leading and b.epoch == 2  # a takeover raises the epoch
    assert table.record is not None and table.record.holder == "b"


async def test_a_taker_counts_from_when_it_first_saw_the_version_not_from_any_wall_clock(
        table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.step()
    clock.now += 1000  # b starts long after a's last renewal (a died long ago)
    b = replica(table, clock, "b")
    await b.step()
    assert not b.leading  # b has seen nothing lapse yet on its own clock
    clock.now += DURATION_S
    await b.step()
    assert b.leading


async def test_a_leader_that_cannot_renew_steps_down_before_anyone_can_take_over(
        table: Table, clock: Clock) -> None:
    a, b = replica(table, clock, "a"), replica(table, clock, "b")
    await a.step()
    await b.step()  # b's count starts no earlier than a's last renewal
    table.down = True  # a is cut off from the table; b will see it again later
    stepped_down_at = None
    while stepped_down_at is None:
        clock.now += 0.5
        await a.step()
        if not a.leading:
            stepped_down_at = clock.now
    assert a.changes == [True, False]  # type: ignore[attr-defined]
    assert stepped_down_at - 100.0 <= DURATION_S - RENEW_S  # before b could take it
    table.down = False
    clock.now = 100.0 + DURATION_S
    await b.step()
    assert b.leading and b.epoch == 2


async def test_a_hung_table_call_counts_as_a_failed_one(table: Table, clock: Clock) -> None:
    a = Lease(table, "a", clock, 0.4, 0.1)
    await a.step()
    table.hang = True
    await a.step()  # returns after its bound, the lease kept until its validity ends
    assert a.leading
    clock.now += 0.4
    await a.step()
    assert not a.leading


async def test_a_deposed_leader_learns_it_at_its_next_renewal(table: Table, clock: Clock) -> None:
    a, b = replica(table, clock, "a"), replica(table, clock, "b")
    await a.step()
    await b.step()
    clock.now += DURATION_S  # a was asleep (a pause): b takes over meanwhile
    await b.step()
    assert b.leading
    await a.step()  # a wakes up and tries to renew the version it wrote
    assert not a.leading and a.changes == [True, False]  # type: ignore[attr-defined]
    leader = a.leader()
    assert leader is not None and leader.holder == "b" and leader.epoch == 2


async def test_release_hands_the_lease_over_at_once(table: Table, clock: Clock) -> None:
    a, b = replica(table, clock, "a"), replica(table, clock, "b")
    await a.step()
    await b.step()
    await a.release(for_good=True)
    assert not a.leading
    await b.step()  # no wait for a lapse
    assert b.leading and b.epoch == 2
    clock.now += 3 * DURATION_S
    await a.step()  # released for good: a never takes it back, even once it lapses
    assert not a.leading


class SlowWrites(Table):
    """A Table whose conditional writes answer only after the others scheduled meanwhile."""

    async def replace(self, record: LeaseRecord, expected_version: str) -> bool:
        await asyncio.sleep(0)
        return await super().replace(record, expected_version)


async def test_a_release_during_a_renewal_still_hands_the_lease_over(clock: Clock) -> None:
    table = SlowWrites()
    a, b = replica(table, clock, "a"), replica(table, clock, "b")
    await a.step()
    renewal = asyncio.ensure_future(a.step())  # the keeper's round, its write in flight
    await asyncio.sleep(0)
    await a.release(for_good=True)  # a stop meanwhile; the renewal's write lands first
    await renewal
    assert table.record is not None and table.record.released
    await b.step()  # no wait for a lapse
    assert b.leading and b.epoch == 2


async def test_a_lease_let_go_unreleased_is_taken_back_by_its_holder(
        table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.step()
    table.down = True
    clock.now += DURATION_S
    await a.step()
    assert not a.leading
    table.down = False
    await a.step()  # still named in the record, no one took it: a leads again, anew
    assert a.leading and a.epoch == 2


async def test_deposed_steps_down_at_once(table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.step()
    a.deposed()
    assert not a.leading and a.epoch == 0


async def test_a_leader_is_unknown_once_its_lease_lapsed(table: Table, clock: Clock) -> None:
    a, b = replica(table, clock, "a"), replica(table, clock, "b")
    await a.step()
    await b.step()
    assert b.leader() is not None
    clock.now += DURATION_S
    assert b.leader() is None  # b does not send calls to a leader that may be dead


def test_a_lease_renewed_less_often_than_it_lasts_is_refused(table: Table, clock: Clock) -> None:
    with pytest.raises(ValueError):
        Lease(table, "a", clock, 1.0, 1.0)


# --- held since the mutation run of leadership/ (docs/mutation.md) ----------------------
def test_a_lease_never_renewed_or_renewed_as_often_as_it_lasts_is_refused_in_words(
        table: Table, clock: Clock) -> None:
    for renew_every_s in (0.0, 6.0):  # no renewal at all; or never before it lapses
        with pytest.raises(ValueError) as refused:
            Lease(table, "a", clock, 6.0, renew_every_s)
        assert str(refused.value) == "a lease must be renewed more often than it lasts"


async def test_a_replica_that_has_seen_no_record_knows_no_leader(
        table: Table, clock: Clock) -> None:
    assert replica(table, clock, "a").leader() is None


async def test_a_released_record_names_no_leader(table: Table, clock: Clock) -> None:
    a, b = replica(table, clock, "a"), replica(table, clock, "b")
    await a.step()
    await b.step()
    await b.release(for_good=True)  # b stops: it watches, never takes
    await a.release()
    await b.step()  # b reads the released record, fresh on its clock
    assert b.current is not None and b.current.released
    assert b.leader() is None


async def test_a_replicas_own_record_from_before_its_step_down_names_no_leader(
        table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.step()
    table.down = True  # a cannot renew: it steps down, still named in the record
    clock.now += DURATION_S
    await a.step()
    await a.release(for_good=True)  # then stops: it reads the record, never takes it
    table.down = False
    await a.step()
    assert not a.leading and a.current is not None and a.current.holder == "a"
    assert a.leader() is None


async def test_a_leader_steps_down_exactly_duration_less_renewal_after_its_last_renewal(
        table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.step()  # takes it at 100
    clock.now += RENEW_S
    await a.step()  # renewed at 101.5: valid until 101.5 + 6 - 1.5 = 106
    clock.now = 106.0 - 0.01
    table.down = True
    await a.step()
    assert a.leading and a.epoch == 1
    table.down = False
    clock.now = 106.0  # a slept until exactly then; the table answers again
    await a.step()
    # It let its hold lapse first, then took the lease anew (no one else had): a new term.
    assert a.changes == [True, False, True]  # type: ignore[attr-defined]
    assert a.epoch == 2


class FailsAt(Table):
    """A Table whose renewal fails after the clock reached ``at`` meanwhile."""

    def __init__(self, clock: Clock, at: float) -> None:
        super().__init__()
        self.clock, self.at = clock, at

    async def replace(self, record: LeaseRecord, expected_version: str) -> bool:
        if self.record is not None and self.record.holder == record.holder:
            self.clock.now = self.at
            raise LeaseUnreachable("down")
        return await super().replace(record, expected_version)


async def test_a_renewal_that_fails_as_the_hold_ends_steps_down_at_once(
        clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    table = FailsAt(clock, 100.0 + DURATION_S - RENEW_S)
    a = replica(table, clock, "a")
    await a.step()  # takes it at 100: valid until 104.5
    clock.now += RENEW_S
    await a.step()  # the renewal fails just as 104.5 is reached
    assert not a.leading and a.changes == [True, False]  # type: ignore[attr-defined]
    assert ("this replica no longer leads (epoch 1): not renewed in time (down)"
            in _lines(caplog))


async def test_a_release_not_for_good_lets_the_replica_lead_again(
        table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.step()
    await a.release()
    await a.step()  # released, not retired: a takes it back at once
    assert a.leading and a.epoch == 2


async def test_a_release_for_good_is_never_taken_back_even_with_no_one_else(
        table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.step()
    await a.release(for_good=True)
    await a.release()  # a later release does not undo it
    for _ in range(3):
        clock.now += DURATION_S
        await a.step()
    assert not a.leading and a.changes == [True, False]  # type: ignore[attr-defined]
    assert table.record is not None and table.record.released


async def test_a_release_writes_a_new_version(table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.step()
    before = table.record
    await a.release()
    assert table.record is not None and before is not None
    assert table.record.released and table.record.version != before.version


async def test_a_renewal_writes_the_addresses_known_now(table: Table, clock: Clock) -> None:
    a = Lease(table, "a", clock, DURATION_S, RENEW_S)  # the ports are bound later
    await a.step()
    a.advertise("a:18082", "a:18081")
    clock.now += RENEW_S
    await a.step()
    assert table.record is not None
    assert (table.record.submission_address, table.record.execution_address) == (
        "a:18082", "a:18081")


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "leadership.lease"]


async def test_each_step_down_is_logged_with_its_cause(
        table: Table, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    b_clock = Clock()  # b's own clock: b sees a lapse that a, paused, never saw
    a, b = replica(table, clock, "a"), replica(table, b_clock, "b")
    await a.step()
    a.deposed()
    await a.step()  # epoch 2
    await a.release()
    await a.step()  # epoch 3
    clock.now += DURATION_S  # a sleeps through its hold
    await a.step()  # epoch 4
    await b.step()
    b_clock.now += DURATION_S
    await b.step()  # b takes it (epoch 5) while a's clock stood still
    await a.step()  # a's renewal, within its hold, finds the lease taken
    down = [line for line in _lines(caplog) if "no longer leads" in line]
    assert down == [
        "this replica no longer leads (epoch 1): a fenced write was refused",
        "this replica no longer leads (epoch 2): released",
        "this replica no longer leads (epoch 3): not renewed in time",
        "this replica no longer leads (epoch 4): taken by another replica",
    ]


async def test_a_hung_table_is_logged_with_how_long_it_was_waited_for(
        table: Table, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    a = Lease(table, "a", clock, 0.4, 0.1)
    table.hang = True
    await a.step()
    assert _lines(caplog) == ["the lease could not be read: no answer within 0.1 s"]


# --- held since the mutation run of issue 27 (docs/mutation.md) -------------------------
async def test_a_replica_takes_a_free_lease_whatever_its_monotonic_clock_starts_at(
        table: Table) -> None:
    clock = Clock()
    clock.now = 0.0  # a monotonic clock's origin is unspecified; it may read 0
    a = replica(table, clock, "a")
    await a.step()
    assert a.leading and a.epoch == 1


async def test_a_replica_stopped_before_it_ever_led_never_makes_the_lease(
        table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.release(for_good=True)  # stopped during start-up, before its first round
    for _ in range(3):
        clock.now += DURATION_S
        await a.step()
    assert not a.leading and table.record is None


async def test_a_replica_that_stepped_aside_may_lead_again_exactly_one_duration_later(
        table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.step()
    await a.step_aside()  # at 100: rests until 106
    clock.now = 100.0 + DURATION_S - 0.01
    await a.step()
    assert not a.leading
    clock.now = 100.0 + DURATION_S
    await a.step()
    assert a.leading and a.epoch == 2


async def test_each_takeover_is_logged_with_how_the_lease_came(
        table: Table, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    # The only trace of why leadership moved, as for the step-downs.
    a, b = replica(table, clock, "a"), replica(table, clock, "b")
    await a.step()  # epoch 1: no record yet
    await a.release()
    await a.step()  # epoch 2: the record released
    table.down = True
    clock.now += DURATION_S
    await a.step()  # a's hold lapses; the record still names it
    table.down = False
    await a.step()  # epoch 3: its own, no one took it since
    await b.step()
    clock.now += DURATION_S  # a is silent
    await b.step()  # epoch 4: lapsed under a
    up = [line for line in _lines(caplog) if "leads now" in line]
    assert up == [
        "this replica leads now (epoch 1, a new lease)",
        "this replica leads now (epoch 2, released by a)",
        "this replica leads now (epoch 3, ours before a step-down)",
        "this replica leads now (epoch 4, lapsed under a)",
    ]


async def test_a_lease_holds_at_its_epoch_until_its_own_clock_says_it_lapsed(
        table: Table, clock: Clock) -> None:
    # Asked before a job write that carries no fence check (docs/replicas.md, "Fence"):
    # a leader that slept past its hold must not send one, even before a round notices.
    a = replica(table, clock, "a")
    assert not a.holds(0) and not a.holds(1)
    await a.step()
    assert a.holds(1) and not a.holds(2) and not a.holds(0)
    clock.now += DURATION_S - RENEW_S - 0.001
    assert a.holds(1)
    clock.now += 0.001  # no renewal since: the hold ends exactly where a step-down would
    assert not a.holds(1)
    await a.step()  # the round agrees: it steps down, and takes its own lease again
    assert a.epoch == 2 and a.holds(2) and not a.holds(1)  # a new term: the old one's over


async def test_a_renewal_extends_the_hold_and_a_release_ends_it(
        table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.step()
    clock.now += RENEW_S
    await a.step()  # renewed: held until duration - renewal after this round began
    clock.now += DURATION_S - RENEW_S - 0.001
    assert a.holds(1)
    await a.release()
    assert not a.holds(1)

"""Overload protection: past a number of concurrent calls, a bounded number wait their turn
and the rest are answered at once; and each token's own share of the calls, so one caller
cannot starve the others (docs/errors.md, "Calls in progress" and "Limits per token")."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from common.caller import CALLER
from common.identity import Role
from message_manager import SchedulerError

__all__ = ["CALLER", "Admission", "Buckets", "CallLimits", "LeaderWaitRoom", "TokenLimits",
           "TokenShare"]
BURST_S = 2.0  # a bucket holds this many seconds of its rate: a short burst passes
TRACKED_TOKENS = 100_000  # buckets kept at most; a full bucket forgotten costs nothing
# Calls that may wait for a leader at once. Each client waits in one call at a time (the SDK
# makes one per run, a node one per job), so no deployment has this many waiting callers
# in a failover; only a flood does.
LEADER_WAIT_MAX_CALLS = 10_000
# Their requests' bytes: twice what all queues hold by default (SCHEDULER_MAX_QUEUE_BYTES),
# so the room refuses only calls of which as many could not have been queued anyway.
LEADER_WAIT_MAX_BYTES = 200 * 1024 * 1024


class Admission:
    """Counts a service's calls in progress against its limit; past it, up to
    ``max_waiting`` calls wait for a slot in arrival order (event loop only, no lock).

    A burst (a store that stalls for a moment while many users poll) then makes calls
    wait rather than fail: the SDK does not retry RESOURCE_EXHAUSTED, so a refusal ends
    a user's run. Only past the waiting room is a call refused at once."""

    def __init__(self, limit: int, max_waiting: int = 0) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.in_flight = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def try_enter(self) -> bool:
        """Take a slot now, or False when the service is full. (While calls wait, it is:
        leave() hands each slot given back to the longest-waiting call.)"""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    async def enter(self) -> None:
        """Take a slot, waiting for one in arrival order; SchedulerError ``overloaded``
        at once when the waiting room is full too."""
        if self.try_enter():
            return
        if len(self._waiting) >= self.max_waiting:
            raise SchedulerError("overloaded", limit=self.limit)
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn  # leave() hands its slot over
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.leave()  # handed a slot as the caller left: pass it on
            elif turn in self._waiting:  # (leave() may have dropped it already)
                self._waiting.remove(turn)
            raise

    def leave(self) -> None:
        """Give a slot back: to the longest-waiting call, else to the service."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot changes hands; in_flight stays
                return
        self.in_flight -= 1

    @contextmanager
    def released(self) -> Iterator[None]:
        """Hold no slot for a while (a node parked in a long poll costs nothing)."""
        self.leave()
        try:
            yield
        finally:
            self.in_flight += 1


class LeaderWaitRoom:
    """Calls waiting for a leader (an election, a recovery:
    scheduler/replication/replicas.py), and the bytes of the requests they hold, each
    bounded (docs/replicas.md, "Where each call goes"). A waiting call holds no slot of its
    port's Admission, so without this room a flood during a failover would grow memory
    without bound; past either bound a call is refused at once (``leader_wait_full``)
    rather than held."""

    def __init__(self, max_calls: int = LEADER_WAIT_MAX_CALLS,
                 max_bytes: int = LEADER_WAIT_MAX_BYTES) -> None:
        self.max_calls = max_calls
        self.max_bytes = max_bytes
        self.calls = 0
        self.bytes = 0

    def enter(self, size: int) -> None:
        """Seat a call whose request is ``size`` bytes, or SchedulerError when it does not fit."""
        if self.calls + 1 > self.max_calls or self.bytes + size > self.max_bytes:
            raise SchedulerError("leader_wait_full", calls=self.max_calls, bytes=self.max_bytes)
        self.calls += 1
        self.bytes += size

    def leave(self, size: int) -> None:
        """A call :meth:`enter` seated stopped waiting."""
        self.calls -= 1
        self.bytes -= size


class Buckets:
    """Token buckets by key: each refills at ``rate_per_s`` up to BURST_S seconds' worth
    (at least one). Bounded: the longest-unused buckets are forgotten first, which at
    worst hands an idle key a fresh bucket."""

    def __init__(self, monotonic: Callable[[], float], max_keys: int = TRACKED_TOKENS) -> None:
        self._monotonic = monotonic
        self._max_keys = max_keys
        self._levels: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key → (level, at)

    def take(self, key: str, rate_per_s: float) -> bool:
        """Spend one from ``key``'s bucket, or False when it is empty."""
        capacity = max(rate_per_s * BURST_S, 1.0)
        now = self._monotonic()
        level, at = self._levels.pop(key, (capacity, now))
        level = min(capacity, level + (now - at) * rate_per_s)
        self._levels[key] = (level - 1 if level >= 1 else level, now)
        while len(self._levels) > self._max_keys:
            self._levels.popitem(last=False)
        return level >= 1

    def give_back(self, key: str, rate_per_s: float) -> None:
        """Return one taken from ``key``'s bucket (what it paid for was not spent)."""
        capacity = max(rate_per_s * BURST_S, 1.0)
        level, at = self._levels.get(key, (capacity, self._monotonic()))
        self._levels[key] = (min(capacity, level + 1), at)


@dataclass(frozen=True)
class TokenShare:
    """What one token of a role may use of a service at once, and how fast."""

    max_in_flight: int
    rate_per_s: float


def _default_shares() -> dict[Role, TokenShare]:
    # Far above an SDK user (one call at a time per run, a poll a second), below a flood.
    # Each rate is at least ten times the polls of a role's most live jobs
    # (SCHEDULER_MAX_CONCURRENT_JOBS_*: 1000 / 10 / 5), polled once a second.
    return {Role.ADMIN: TokenShare(50, 10000.0), Role.DEVELOPER: TokenShare(20, 100.0),
            Role.GUEST: TokenShare(10, 50.0)}


@dataclass(frozen=True)
class CallLimits:
    """The per-token limits (config: SCHEDULER_MAX_CALLS_IN_FLIGHT_PER_TOKEN_*, ...)."""

    by_role: Mapping[Role, TokenShare] = field(default_factory=_default_shares)
    token_lookup_rate_per_s: float = 50.0  # tokens new to this replica, checked per s per address
    unknown_tokens_kept: int = 10_000  # the cache of tokens the database did not know
    job_miss_rate_per_token_s: float = 5.0  # store reads of job ids that name nothing


class TokenLimits:
    """Each token's calls in progress and call rate against its role's share.

    The role is the one its last resolution gave (``role_of``). A token not resolved yet
    is not counted: its first calls share one lookup, which the budget of lookups of new
    tokens bounds (scheduler/access/auth.py), and from then on it is known.
    """

    def __init__(self, shares: Mapping[Role, TokenShare], role_of: Callable[[str], Role | None],
                 monotonic: Callable[[], float]) -> None:
        self._shares = shares
        self._role_of = role_of
        self._in_flight: dict[str, int] = {}  # only tokens with calls in progress
        self._rates = Buckets(monotonic)

    def enter(self, key: str) -> bool:
        """Count a call of the token ``key`` (True), or not when the token is not known yet
        (False); SchedulerError when the call is past the token's share."""
        role = self._role_of(key)
        if role is None:
            return False
        share = self._shares[role]
        if self._in_flight.get(key, 0) >= share.max_in_flight:
            raise SchedulerError("token_busy", limit=share.max_in_flight, role=role.value)
        if not self._rates.take(key, share.rate_per_s):
            raise SchedulerError("token_rate", rate=f"{share.rate_per_s:g}", role=role.value)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return True

    def leave(self, key: str) -> None:
        """A call :meth:`enter` counted ended."""
        left = self._in_flight.pop(key) - 1
        if left:
            self._in_flight[key] = left

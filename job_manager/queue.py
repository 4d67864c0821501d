"""A backend's queue: fair between tokens, shorter timeouts first, nobody waits forever.

Order of hand-over, decided at each ``pop``:

1. Starvation bound: a job that has waited longer than ``max_wait_s`` goes before
   every job that has waited less, oldest first.
2. Fair share between tokens (stride scheduling): each token with queued jobs has a
   virtual time that advances by ``1 / weight(role)`` each time one of its jobs is
   handed over; the token with the smallest virtual time goes next. A token that
   starts queueing joins at the queue's current virtual time, so a flood of one
   token's jobs holds back a newcomer's job by at most one hand-over.
3. Within a token, and between tokens at the same virtual time: the smallest
   ``queued_at + timeout_weight * timeout``, so among otherwise equal jobs the
   shorter declared timeout goes first, and age still counts.

Every operation is O(log n) in the queued jobs (sorted lists); ``position`` is
O(log n + tokens with queued jobs).
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Generic, Hashable, Mapping, NamedTuple, TypeVar

from sortedcontainers import SortedKeyList

from common.clock import Clock
from common.identity import Role
from job_manager.model import JobRecord, JobStatus, QueuedRow

_EPSILON = 1e-9
_Value = TypeVar("_Value", bound=Hashable)
_BY_AGE = attrgetter("age_key")
_BY_RANK = attrgetter("rank_key")


@dataclass(frozen=True)
class Gate:
    """Who may be handed a job from a queue now (job_manager/turns.py).

    ``admits(origin)``: whether an owner's jobs sent to a backend may go (a reservation's
    window admits its users only; a spent budget admits none of its owner's); asked once
    per owner with queued jobs, of its first job's origin. ``first``: the fingerprint of
    the owner whose jobs go before everyone else's, if admitted (a session holding the
    backend)."""

    admits: Callable[[JobOrigin], bool]
    first: str | None = None


@dataclass(frozen=True)
class SchedulingPolicy:
    """The factors of the queue order; configuration, not code."""

    max_wait_s: float = 1800.0
    timeout_weight: float = 0.1  # seconds of queue age one second of declared timeout costs
    role_weights: Mapping[Role, float] = field(
        default_factory=lambda: {Role.ADMIN: 4.0, Role.DEVELOPER: 2.0, Role.GUEST: 1.0}
    )


class JobOrigin(NamedTuple):
    """What the queued jobs of one owner, sent alike to one backend, share: held once for
    all of them (docs/design.md, "A queued job in memory")."""

    owner_name: str
    owner_fingerprint: str
    role: Role
    backend: str
    sdk_version: str
    save_job: bool


class _Recent(Generic[_Value]):
    """The values seen lately, so that equal ones are held once: jobs sent alike (most of
    a batch) share their origin, settings and timeout. Like sys.intern for strings: the
    values are immutable, so sharing them is invisible. Bounded: forgotten all at once
    when full (jobs already made keep theirs)."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._seen: dict[_Value, _Value] = {}

    def shared(self, value: _Value) -> _Value:
        seen = self._seen.setdefault(value, value)
        if len(self._seen) > self._limit:
            self._seen.clear()
        return seen


_ORIGINS: _Recent[JobOrigin] = _Recent()
_SETTINGS: _Recent[bytes] = _Recent()
_TIMEOUTS: _Recent[float] = _Recent()


class QueuedJob:
    """A job waiting in a queue, with its program held in memory for a fast hand-over.

    Compact (docs/design.md, "A queued job in memory"): besides its program it holds its
    id, its shared :class:`JobOrigin`, its settings and timeout, its size and two sort keys;
    its :class:`JobRecord` is rebuilt when asked for. A record with anything more than a
    fresh submission has (tags, an idempotency key, a requeue...) is kept whole instead.

    A job recovered from the store comes without its program (``None``), so that a
    restart or a new leader serves at once (docs/replicas.md); the program is read in
    the background, or at the latest when the job is handed over.
    """

    __slots__ = ("_size_bytes", "_whole", "age_key", "charged", "job_id", "origin", "program",
                 "rank_key", "settings", "timeout_s")

    job_id: str
    origin: JobOrigin
    settings: bytes
    timeout_s: float
    program: bytes | None
    charged: bool  # its token's fair share was charged when it was taken out
    # Sort keys, one int each (no tuple per job): _key(value, sequence) orders as the pair
    # (value, sequence) would. By age: when it was queued, in microseconds since the epoch.
    # By rank: queued_at + timeout_weight * timeout, set by the queue on first push (None
    # before), kept when put back.
    age_key: int
    rank_key: int | None
    _size_bytes: int | None  # None: the length of its program
    _whole: JobRecord | None  # the record, when it cannot be rebuilt from the fields above

    def __init__(self, record: JobRecord, program: bytes | None,
                 rank_key: int | None = None) -> None:
        self.job_id = record.job_id
        self.program = program
        self.charged = False
        self.rank_key = rank_key
        self._size_bytes = None if program is not None else record.input_size_bytes
        self.record = record

    @classmethod
    def recovered(cls, found: JobRecord | QueuedRow) -> QueuedJob:
        """A job read back from the store, without its program: from a lean row (no record
        built) or from a whole record."""
        if isinstance(found, JobRecord):
            return cls(found, None)
        job = cls.__new__(cls)
        job._take_row(found)
        return job

    def _take_row(self, found: QueuedRow) -> None:
        """Be the job a lean row describes (no record is built)."""
        self.job_id = found.job_id
        self.origin = _ORIGINS.shared(JobOrigin(
            found.owner_name, found.owner_fingerprint, found.role, found.backend,
            found.sdk_version, found.save_job))
        self.settings = _SETTINGS.shared(found.settings)
        self.timeout_s = _TIMEOUTS.shared(found.timeout_s)
        self.program, self.charged, self.rank_key = None, False, None
        self._size_bytes, self._whole = found.input_size_bytes, None
        self.age_key = _key_of_time(_microseconds(found.queued_at), 0)

    @classmethod
    def at_head(cls, record: JobRecord) -> QueuedJob:
        """A job queued again after its node vanished, ahead of every other job of its
        owner (rank 0, sequence 0) and early by age (its old queued_at)."""
        return cls(record, None, rank_key=0)

    @property
    def record(self) -> JobRecord:
        """The job's record, rebuilt from the compact fields (or kept whole)."""
        if self._whole is not None:
            return self._whole
        origin = self.origin
        queued_at = _EPOCH + timedelta(microseconds=self.age_key >> _SEQUENCE_BITS)
        return JobRecord(
            job_id=self.job_id, status=JobStatus.QUEUED, backend=origin.backend,
            owner_name=origin.owner_name, owner_fingerprint=origin.owner_fingerprint,
            role=origin.role, settings=self.settings, timeout_s=self.timeout_s,
            input_size_bytes=self.size_bytes, sdk_version=origin.sdk_version,
            save_job=origin.save_job, submitted_at=queued_at, queued_at=queued_at)

    @record.setter
    def record(self, record: JobRecord) -> None:
        """Take ``record``'s fields; while queued, its queued_at must stay (a sort key)."""
        self.origin = _ORIGINS.shared(JobOrigin(
            record.owner_name, record.owner_fingerprint, record.role, record.backend,
            record.sdk_version, record.save_job))
        self.settings = _SETTINGS.shared(record.settings)
        self.timeout_s = _TIMEOUTS.shared(record.timeout_s)
        self.age_key = _key_of_time(_microseconds(record.queued_at), max(0, self.sequence))
        self._whole = None
        if self.record != record:
            self._whole = record

    def become(self, record: JobRecord) -> None:
        """Take ``record``'s fields (a status change, new tags); see ``record``'s setter."""
        self.record = record

    def give_program(self, program: bytes | None) -> None:
        """Hold the program read for a recovered job (None: it was not found)."""
        self.program = program

    def number(self, sequence: int, timeout_weight: float) -> None:
        """Take its arrival ``sequence`` in a queue, and its rank from its age and timeout."""
        self.age_key |= sequence
        self.rank_key = _key_of_rank(self.queued_at_s + timeout_weight * self.timeout_s,
                                     sequence)

    def taken(self, charged: bool) -> None:
        """Taken out of its queue; ``charged``: its owner's turn was spent on it."""
        self.charged = charged

    @property
    def idempotency_key(self) -> str:
        """The key its submission was made idempotent with ("" for none)."""
        return self._whole.idempotency_key if self._whole is not None else ""

    @property
    def owner(self) -> str:
        return self.origin.owner_fingerprint

    @property
    def size_bytes(self) -> int:
        """The bytes the queue budget counts for it, fixed when it is made: its program's
        size, or the size its record gives until the program is read."""
        if self._size_bytes is not None:
            return self._size_bytes
        assert self.program is not None
        return len(self.program)

    @property
    def sequence(self) -> int:
        """Its arrival order in its queue, or -1 before its first push."""
        return -1 if self.rank_key is None else self.rank_key & _SEQUENCE_MASK

    @property
    def queued_at_s(self) -> float:
        """When it was queued, in epoch seconds (as ``datetime.timestamp`` gives it)."""
        return (self.age_key >> _SEQUENCE_BITS) / 1_000_000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_DOUBLE, _INT64 = struct.Struct("<d"), struct.Struct("<q")
# Room in a sort key for a queue's arrival numbers: 2**39, more than a queue hands over in
# a process's life (17 years at 1,000 jobs a second); 39 bits keep a key of microseconds
# in 90 bits, three of CPython's 30-bit digits.
_SEQUENCE_BITS = 39
_SEQUENCE_MASK = (1 << _SEQUENCE_BITS) - 1


def _microseconds(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (a datetime holds whole microseconds); a
    naive one is local time, as ``datetime.timestamp`` takes it."""
    if moment.tzinfo is None:
        moment = moment.astimezone(UTC)
    return (moment - _EPOCH) // _MICROSECOND


def _key_of_time(microseconds: int, sequence: int) -> int:
    return (microseconds << _SEQUENCE_BITS) | sequence


def _key_of_rank(rank_s: float, sequence: int) -> int:
    """One int that orders as (rank_s, sequence) does: the float's bits, made monotonic."""
    bits: int = _INT64.unpack(_DOUBLE.pack(rank_s))[0]
    if bits < 0:  # a negative float: larger bits are further below zero
        bits = -(bits & 0x7FFF_FFFF_FFFF_FFFF)
    return (bits << _SEQUENCE_BITS) + sequence


@dataclass(eq=False, slots=True)
class _Owner:
    """One token's jobs in this queue and its place in the fair share."""

    fingerprint: str
    weight: float
    virtual_time: float
    jobs: SortedKeyList = field(default_factory=lambda: SortedKeyList(key=_BY_RANK))

    def order_key(self) -> tuple[float, int]:
        return (self.virtual_time, self.jobs[0].rank_key)

    def catch_up(self, virtual_clock: float) -> None:
        """Start no earlier than the queue's virtual clock: an idle token saves no turns."""
        self.virtual_time = max(self.virtual_time, virtual_clock)

    def add(self, jobs: list[QueuedJob]) -> None:
        """Its jobs joined the queue."""
        self.jobs.update(jobs)

    def drop(self, job: QueuedJob) -> None:
        """One of its jobs left the queue."""
        self.jobs.remove(job)

    def turn_spent(self) -> None:
        """One of its jobs was handed over: its next turn is a stride later."""
        self.virtual_time += 1.0 / self.weight

    def turn_given_back(self) -> None:
        """A job whose turn was spent came back unstarted: the turn is its own again."""
        self.virtual_time -= 1.0 / self.weight


class JobQueue:
    """The jobs waiting for one backend (or for all, with --unify-backends)."""

    def __init__(self, policy: SchedulingPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._sequence = itertools.count()
        self._jobs: dict[str, QueuedJob] = {}
        self._by_age = SortedKeyList(key=_BY_AGE)
        self._owners: dict[str, _Owner] = {}
        self._turns = SortedKeyList(key=_Owner.order_key)  # owners with queued jobs
        self._virtual_clock = 0.0
        self.bytes_held = 0
        # Positions asked for since the queue last changed: every waiting user polls
        # theirs each second, and one costs a look at every owner (docs/design.md).
        self._positions: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def push(self, job: QueuedJob) -> None:
        """Add a job in its place; a job already queued is refused, never held twice."""
        if job.job_id in self._jobs:
            raise ValueError(f"job {job.job_id} is queued already")
        self._hold(job)
        self._join(self._owner(job), [job])
        self._by_age.add(job)

    def extend(self, jobs: list[QueuedJob]) -> None:
        """Add many jobs at once (a recovery), each in the place ``push`` would give it,
        with one sort per structure instead of one insertion per job."""
        ids = [job.job_id for job in jobs]
        if len(set(ids)) != len(ids) or any(job_id in self._jobs for job_id in ids):
            raise ValueError("a job is queued already, or named twice")
        by_owner: dict[str, list[QueuedJob]] = {}
        for job in jobs:
            self._hold(job)
            by_owner.setdefault(job.owner, []).append(job)
        for owned in by_owner.values():
            self._join(self._owner(owned[0]), owned)
        self._by_age.update(jobs)

    def _hold(self, job: QueuedJob) -> None:
        """Number a new job (its arrival and rank) and count it as held."""
        if job.rank_key is None:
            sequence = next(self._sequence)
            assert sequence <= _SEQUENCE_MASK, "a queue numbered 2**39 jobs"
            job.number(sequence, self._policy.timeout_weight)
        self._jobs[job.job_id] = job
        self.bytes_held += job.size_bytes

    def _join(self, owner: _Owner, jobs: list[QueuedJob]) -> None:
        """Add ``jobs`` to their owner's line; an owner with none waiting catches up with
        the virtual clock first, so an idle token saves up no turns."""
        self._positions.clear()
        if owner.jobs:
            self._turns.remove(owner)
        else:
            owner.catch_up(self._virtual_clock)
        owner.add(jobs)
        self._turns.add(owner)

    def _owner(self, job: QueuedJob) -> _Owner:
        """The job's token's place in the fair share, made on its first job."""
        owner = self._owners.get(job.owner)
        if owner is None:
            weight = self._policy.role_weights.get(job.origin.role, 1.0)
            owner = self._owners[job.owner] = _Owner(job.owner, weight, self._virtual_clock)
        return owner

    def pop(self, gate: Gate | None = None) -> QueuedJob | None:
        """Take the job that goes next, or None when the queue is empty (or, with a
        ``gate``, when no owner it admits has a job queued)."""
        if not self._jobs:
            return None
        job = self._next(gate) if gate is not None else self._next_of_all()
        if job is not None:
            self._take(job, charge=True)
        return job

    def _next_of_all(self) -> QueuedJob:
        oldest: QueuedJob = self._by_age[0]
        overdue = self._clock.now().timestamp() - oldest.queued_at_s > self._policy.max_wait_s
        return oldest if overdue else self._turns[0].jobs[0]

    def _next(self, gate: Gate) -> QueuedJob | None:
        """The next job among the owners ``gate`` admits, its ``first`` owner's before all.

        The starvation bound and the fair share hold among the admitted: the oldest
        admitted job past the bound goes first (jobs held back by the gate are passed over,
        a cost of one look each while they wait past the bound), then the admitted owner
        whose turn comes first. O(owners + overdue jobs held back)."""
        first = self._owners.get(gate.first) if gate.first is not None else None
        if first is not None and first.jobs and gate.admits(first.jobs[0].origin):
            return first.jobs[0]  # type: ignore[no-any-return]
        bound_s = self._clock.now().timestamp() - self._policy.max_wait_s
        for job in self._by_age:
            if job.queued_at_s >= bound_s:
                break
            if gate.admits(job.origin):
                return job  # type: ignore[no-any-return]
        for owner in self._turns:
            if gate.admits(owner.jobs[0].origin):
                return owner.jobs[0]  # type: ignore[no-any-return]
        return None

    def get(self, job_id: str) -> QueuedJob | None:
        """The queued job with this id, left in its place, or None."""
        return self._jobs.get(job_id)

    def remove(self, job_id: str) -> QueuedJob | None:
        """Take a given job out (a cancel), or None when it is not in this queue."""
        job = self._jobs.get(job_id)
        if job is not None:
            self._take(job, charge=False)
        return job

    def restore(self, job: QueuedJob) -> None:
        """Put back a job taken out but not started (or not cancelled): same place, no charge."""
        owner = self._owners.get(job.owner)
        if owner is not None and job.charged:
            if owner.jobs:
                self._turns.remove(owner)
            owner.turn_given_back()
            if owner.jobs:
                self._turns.add(owner)
        self.push(job)

    def count_of(self, owner_fingerprint: str, backend: str) -> int:
        """How many of the owner's jobs for ``backend`` this queue holds."""
        owner = self._owners.get(owner_fingerprint)
        if owner is None:
            return 0
        return sum(1 for job in owner.jobs if job.origin.backend == backend)

    def oldest_first(self) -> list[QueuedJob]:
        """The queued jobs, the oldest first (a snapshot)."""
        return list(self._by_age)

    def position(self, job_id: str) -> int | None:
        """About how many hand-overs until this job's (1 = next), or None if not queued.

        Counts the token's own jobs ahead of it and, for each other token, the jobs
        whose turn comes earlier in the fair share. It only falls as jobs leave.
        """
        known = self._positions.get(job_id)
        if known is not None:
            return known
        job = self._jobs.get(job_id)
        if job is None:
            return None
        position = self._positions[job_id] = self._count_ahead(job) + 1
        return position

    def _count_ahead(self, job: QueuedJob) -> int:
        owner = self._owners[job.owner]
        ahead_in_own: int = owner.jobs.index(job)
        turn = owner.virtual_time + ahead_in_own / owner.weight
        ahead = ahead_in_own
        for other in self._turns:
            if other is not owner:
                ahead += self._turns_before(other, turn, job)
        return ahead

    @staticmethod
    def _turns_before(other: _Owner, turn: float, job: QueuedJob) -> int:
        """How many of ``other``'s jobs come before ``job``, whose turn is at ``turn``."""
        count = max(0, math.ceil((turn - other.virtual_time) * other.weight - _EPSILON))
        if count < len(other.jobs):
            # At the same turn, the smaller rank goes first (as in pop).
            tied = other.jobs[count]
            same_turn = abs(other.virtual_time + count / other.weight - turn) < _EPSILON
            if same_turn and tied.rank_key < job.rank_key:
                count += 1
        return min(count, len(other.jobs))

    def _take(self, job: QueuedJob, *, charge: bool) -> None:
        self._positions.clear()
        owner = self._owners[job.owner]
        self._turns.remove(owner)
        owner.drop(job)
        self._by_age.remove(job)
        del self._jobs[job.job_id]
        self.bytes_held -= job.size_bytes
        job.taken(charge)
        if charge:
            self._virtual_clock = max(self._virtual_clock, owner.virtual_time)
            owner.turn_spent()
        if owner.jobs:
            self._turns.add(owner)
        elif owner.virtual_time <= self._virtual_clock:
            del self._owners[job.owner]  # would rejoin at the virtual clock anyway

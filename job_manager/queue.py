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
from dataclasses import dataclass, field
from typing import Mapping

from sortedcontainers import SortedKeyList

from common.clock import Clock
from common.identity import Role
from job_manager.model import JobRecord

_EPSILON = 1e-9


@dataclass(frozen=True)
class SchedulingPolicy:
    """The factors of the queue order; configuration, not code."""

    max_wait_s: float = 1800.0
    timeout_weight: float = 0.1  # seconds of queue age one second of declared timeout costs
    role_weights: Mapping[Role, float] = field(
        default_factory=lambda: {Role.ADMIN: 4.0, Role.DEVELOPER: 2.0, Role.GUEST: 1.0}
    )


@dataclass(eq=False, slots=True)
class QueuedJob:
    """A job waiting in a queue, with its program held in memory for a fast hand-over.

    A job recovered from the store comes without its program (``None``), so that a
    restart or a new leader serves at once (docs/replicas.md); the program is read in
    the background, or at the latest when the job is handed over.
    """

    record: JobRecord
    program: bytes | None
    sequence: int = -1  # arrival order, set by the queue on first push, kept when put back
    rank_s: float = 0.0  # queued_at + timeout_weight * timeout, set by the queue
    charged: bool = False  # its token's fair share was charged when it was taken out
    # The bytes the queue budget counts for it, fixed when it is made: its program's
    # size, or the size its record gives until the program is read.
    size_bytes: int = -1

    # When it was queued, in epoch seconds: a sort key, read often, so worked out once.
    queued_at_s: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.size_bytes < 0:
            self.size_bytes = (len(self.program) if self.program is not None
                               else self.record.input_size_bytes)
        self.queued_at_s = self.record.queued_at.timestamp()

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def owner(self) -> str:
        return self.record.owner_fingerprint


@dataclass(eq=False, slots=True)
class _Owner:
    """One token's jobs in this queue and its place in the fair share."""

    fingerprint: str
    weight: float
    virtual_time: float
    jobs: SortedKeyList = field(
        default_factory=lambda: SortedKeyList(key=lambda j: (j.rank_s, j.sequence))
    )

    def order_key(self) -> tuple[float, float, int]:
        head = self.jobs[0]
        return (self.virtual_time, head.rank_s, head.sequence)


class JobQueue:
    """The jobs waiting for one backend (or for all, with --unify-backends)."""

    def __init__(self, policy: SchedulingPolicy, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._sequence = itertools.count()
        self._jobs: dict[str, QueuedJob] = {}
        self._by_age = SortedKeyList(key=lambda j: (j.queued_at_s, j.sequence))
        self._owners: dict[str, _Owner] = {}
        self._turns = SortedKeyList(key=_Owner.order_key)  # owners with queued jobs
        self._virtual_clock = 0.0
        self.bytes_held = 0

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
        if job.sequence < 0:
            job.sequence = next(self._sequence)
            job.rank_s = job.queued_at_s + self._policy.timeout_weight * job.record.timeout_s
        self._jobs[job.job_id] = job
        self.bytes_held += job.size_bytes

    def _join(self, owner: _Owner, jobs: list[QueuedJob]) -> None:
        """Add ``jobs`` to their owner's line; an owner with none waiting catches up with
        the virtual clock first, so an idle token saves up no turns."""
        if owner.jobs:
            self._turns.remove(owner)
        else:
            owner.virtual_time = max(owner.virtual_time, self._virtual_clock)
        owner.jobs.update(jobs)
        self._turns.add(owner)

    def _owner(self, job: QueuedJob) -> _Owner:
        """The job's token's place in the fair share, made on its first job."""
        owner = self._owners.get(job.owner)
        if owner is None:
            weight = self._policy.role_weights.get(job.record.role, 1.0)
            owner = self._owners[job.owner] = _Owner(job.owner, weight, self._virtual_clock)
        return owner

    def pop(self) -> QueuedJob | None:
        """Take the job that goes next, or None when the queue is empty."""
        if not self._jobs:
            return None
        oldest: QueuedJob = self._by_age[0]
        overdue = self._clock.now().timestamp() - oldest.queued_at_s > self._policy.max_wait_s
        job: QueuedJob = oldest if overdue else self._turns[0].jobs[0]
        self._take(job, charge=True)
        return job

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
            owner.virtual_time -= 1.0 / owner.weight
            if owner.jobs:
                self._turns.add(owner)
        self.push(job)

    def oldest_first(self) -> list[QueuedJob]:
        """The queued jobs, the oldest first (a snapshot)."""
        return list(self._by_age)

    def position(self, job_id: str) -> int | None:
        """About how many hand-overs until this job's (1 = next), or None if not queued.

        Counts the token's own jobs ahead of it and, for each other token, the jobs
        whose turn comes earlier in the fair share. It only falls as jobs leave.
        """
        job = self._jobs.get(job_id)
        if job is None:
            return None
        owner = self._owners[job.owner]
        ahead_in_own: int = owner.jobs.index(job)
        turn = owner.virtual_time + ahead_in_own / owner.weight
        ahead = ahead_in_own
        for other in self._turns:
            if other is not owner:
                ahead += self._turns_before(other, turn, job)
        return ahead + 1

    @staticmethod
    def _turns_before(other: _Owner, turn: float, job: QueuedJob) -> int:
        """How many of ``other``'s jobs come before ``job``, whose turn is at ``turn``."""
        count = max(0, math.ceil((turn - other.virtual_time) * other.weight - _EPSILON))
        if count < len(other.jobs):
            # At the same turn, the smaller rank goes first (as in pop).
            tied = other.jobs[count]
            same_turn = abs(other.virtual_time + count / other.weight - turn) < _EPSILON
            if same_turn and (tied.rank_s, tied.sequence) < (job.rank_s, job.sequence):
                count += 1
        return min(count, len(other.jobs))

    def _take(self, job: QueuedJob, *, charge: bool) -> None:
        owner = self._owners[job.owner]
        self._turns.remove(owner)
        owner.jobs.remove(job)
        self._by_age.remove(job)
        del self._jobs[job.job_id]
        self.bytes_held -= job.size_bytes
        job.charged = charge
        if charge:
            self._virtual_clock = max(self._virtual_clock, owner.virtual_time)
            owner.virtual_time += 1.0 / owner.weight
        if owner.jobs:
            self._turns.add(owner)
        elif owner.virtual_time <= self._virtual_clock:
            del self._owners[job.owner]  # would rejoin at the virtual clock anyway

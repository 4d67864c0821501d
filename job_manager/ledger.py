"""The ledger: every piece of in-memory state kept per job, changed only together.

A live job is in several structures at once: a queue while QUEUED (the queue is its
index entry then: a queued job is held once, docs/design.md), the index of claimed or
running jobs otherwise, its owner's quota (concurrent jobs, and queued bytes while
queued), the key its idempotent submission holds, the watchdog's deadlines (while
RUNNING), and a waiting node may have to be woken for it. Each operation here moves a
job between states in all of them at once, with no await in between, so nothing can see
them disagree and no path can forget one (docs/design.md). The JobManager decides; the
ledger keeps.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from common.clock import Clock
from common.identity import Principal
from job_manager.limits import Limits, Quotas
from job_manager.model import JobRecord
from job_manager.queue import JobQueue, QueuedJob, SchedulingPolicy
from job_manager.throughput import DispatchRate
from job_manager.waiters import Waiters
from job_manager.watchdog import Watchdog

UNIFIED_QUEUE = "*"  # the one queue's key with --unify-backends
FINISHED_CACHE_SIZE = 10_000  # recently finished records kept for status polls
# Recovered jobs queued between two turns of the event loop: about 0.1 s of work on a
# loaded machine, well under a lease renewal's margin (admit_in_slices).
ADMIT_SLICE = 10_000


class Ledger:
    """Live jobs, recently finished ones, queues, quotas, idempotency keys, waiting nodes
    and deadlines of one scheduler."""

    def __init__(self, limits: Limits, policy: SchedulingPolicy, clock: Clock,
                 watchdog: Watchdog, deadline_of: Callable[[JobRecord], datetime | None],
                 unify_backends: bool = False) -> None:
        self.quotas = Quotas(limits)
        self.waiters = Waiters()
        self.watchdog = watchdog
        self._deadline_of = deadline_of
        self._policy = policy
        self._clock = clock
        self._unify = unify_backends
        self._queues: dict[str, JobQueue] = {}
        self._rates: dict[str, DispatchRate] = {}
        # The live jobs are those queued (found in their queue, docs/design.md), those
        # claimed (taken out of their queue, their change under way: still QUEUED) and
        # those running.
        self._claimed: dict[str, QueuedJob] = {}
        self._running: dict[str, JobRecord] = {}
        # Final records never change, so recent ones answer status polls from memory.
        self._finished: OrderedDict[str, JobRecord] = OrderedDict()
        self._keys: dict[tuple[str, str], str] = {}  # (owner, idempotency key) → live job

    # --- queues ---------------------------------------------------------------------
    def queue_key(self, backend: str) -> str:
        """The queue a backend's jobs wait in."""
        return UNIFIED_QUEUE if self._unify else backend

    def queue(self, backend: str) -> JobQueue | None:
        """The queue of ``backend``, or None when it has none."""
        return self._queues.get(self.queue_key(backend))

    def open_queue(self, backend: str) -> None:
        """Give ``backend`` a queue, if it has none yet."""
        key = self.queue_key(backend)
        if key not in self._queues:
            self._queues[key] = JobQueue(self._policy, self._clock)
            self._rates[key] = DispatchRate()

    def seconds_per_job(self, backend: str) -> float | None:
        """The recent mean gap between hand-overs from ``backend``'s queue."""
        return self._rates[self.queue_key(backend)].seconds_per_job()

    # --- a job enters --------------------------------------------------------------------
    def reserve(self, principal: Principal, request_bytes: int, program_bytes: int) -> None:
        """Hold a new job's place in its owner's quota, or refuse it (SchedulerError)."""
        self.quotas.reserve(principal, request_bytes, program_bytes)

    def release(self, owner: str, program_bytes: int) -> None:
        """Give back a reservation whose job was never accepted."""
        self.quotas.ended(owner)
        self.quotas.left_queue(owner, program_bytes)

    def admit(self, job: QueuedJob, *, reserved: bool) -> bool:
        """Queue a stored job (``reserved``: its quota was held by :meth:`reserve`).

        A job already live is refused, never held twice; returns whether it was queued.
        """
        if self._is_live(job.job_id):
            if reserved:
                self.release(job.owner, job.size_bytes)
            return False
        if not reserved:
            self.quotas.count(job.owner, job.size_bytes)
        key = self.queue_key(job.origin.backend)
        self.open_queue(job.origin.backend)
        self._queues[key].push(job)
        self._hold_key(job)
        self.waiters.wake(key)
        return True

    def admit_all(self, jobs: list[QueuedJob]) -> int:
        """Queue many stored jobs at once (a recovery: quotas not held); those memory
        knows already (live, or finished here) are left out. Returns how many were queued."""
        by_queue: dict[str, dict[str, QueuedJob]] = {}
        # None known: none to skip (a restart's recovery, one lookup less per job).
        is_known = self._is_known if self.live_count() or self._finished else None
        for job in jobs:
            key = self.queue_key(job.origin.backend)
            if key not in by_queue:
                self.open_queue(job.origin.backend)
                by_queue[key] = {}
            fresh = by_queue[key]
            if job.job_id in fresh or (is_known is not None and is_known(job.job_id)):
                continue
            self.quotas.count(job.owner, job.size_bytes)
            fresh[job.job_id] = job
            self._hold_key(job)
        for key, queued in by_queue.items():
            self._queues[key].extend(list(queued.values()))
            self.waiters.wake(key)
        return sum(len(queued) for queued in by_queue.values())

    async def admit_in_slices(self, jobs: list[QueuedJob]) -> int:
        """admit_all, ADMIT_SLICE jobs at a time, letting the event loop run between
        slices: a takeover of a million queued jobs takes seconds of admission, and the
        lease's renewal runs on this loop (docs/replicas.md). Each slice is whole in every
        structure; what a slice finds known (another slice, or a job memory learnt of
        meanwhile) is left out as in one call."""
        admitted = 0
        for start in range(0, len(jobs), ADMIT_SLICE):
            admitted += self.admit_all(jobs[start:start + ADMIT_SLICE])
            await asyncio.sleep(0)
        return admitted

    def admit_running(self, record: JobRecord) -> None:
        """Watch a job found RUNNING in the store (after a restart or a takeover), unless
        memory knows it already (live, or finished here)."""
        if self._is_known(record.job_id):
            return
        self._running[record.job_id] = record
        self.quotas.count(record.owner_fingerprint, 0)
        self.watchdog.watch(record.job_id, self._deadline_of(record), record.dequeued_at)

    # --- a job moves ---------------------------------------------------------------------
    def take_next(self, backend: str) -> QueuedJob | None:
        """The job that goes next from ``backend``'s queue, claimed: no one else gets it."""
        queue = self.queue(backend)
        job = queue.pop() if queue is not None else None
        if job is not None:
            self._claimed[job.job_id] = job
        return job

    def claim(self, record: JobRecord) -> QueuedJob | None:
        """Take a given queued job out (to cancel it), or None when it is not queued."""
        queue = self.queue(record.backend)
        job = queue.remove(record.job_id) if queue is not None else None
        if job is not None:
            self._claimed[job.job_id] = job
        return job

    def put_back(self, job: QueuedJob) -> None:
        """A claimed job whose change failed: back in its place, and a waiting node woken."""
        self._claimed.pop(job.job_id, None)
        key = self.queue_key(job.origin.backend)
        self._queues[key].restore(job)
        self.waiters.wake(key)

    def started(self, job: QueuedJob, running: JobRecord) -> None:
        """A claimed job is RUNNING: out of the queue's bytes, watched, counted as a hand-over."""
        self.quotas.left_queue(job.owner, job.size_bytes)
        self._claimed.pop(job.job_id, None)
        self._running[job.job_id] = running
        self.watchdog.watch(job.job_id, self._deadline_of(running), running.dequeued_at)
        self._rates[self.queue_key(running.backend)].record(self._clock.monotonic())

    def left_queue(self, job: QueuedJob) -> None:
        """A claimed job will not come back to its queue (cancelled, or changed elsewhere);
        it stays live until it :meth:`ended` or memory will :meth:`forget` it."""
        self.quotas.left_queue(job.owner, job.size_bytes)

    def returned(self, job: QueuedJob, queued: JobRecord) -> None:
        """A RUNNING job no node received is QUEUED again, in its place at the head."""
        job.record = queued
        self._running.pop(job.job_id, None)
        self.quotas.rejoined_queue(job.owner, job.size_bytes)
        self.put_back(job)

    def requeued(self, job: QueuedJob) -> None:
        """A RUNNING job whose node vanished is QUEUED again (still live, still counted)."""
        self._running.pop(job.job_id, None)
        self.quotas.rejoined_queue(job.owner, job.size_bytes)
        key = self.queue_key(job.origin.backend)
        self.open_queue(job.origin.backend)
        self._queues[key].push(job)
        self.waiters.wake(key)

    # --- a job leaves ------------------------------------------------------------------
    def ended(self, record: JobRecord) -> None:
        """A job reached a final status: out of every structure, kept among the finished."""
        # A job this process never held (another process started it) holds no slot here.
        self._let_go(record.job_id)
        self.remember_finished(record)

    def forget(self, job_id: str) -> JobRecord | None:
        """Memory was wrong about a job (the store says otherwise): drop it, free its quota."""
        return self._let_go(job_id)

    def _let_go(self, job_id: str) -> JobRecord | None:
        """Out of every live structure, its quota slot freed; the record it had, if live."""
        record = self._running.pop(job_id, None)
        if record is None and (claimed := self._claimed.pop(job_id, None)) is not None:
            record = claimed.record
        if record is None and (queued := self._queued(job_id)) is not None:
            # Still queued here though it ended elsewhere (another process ran it).
            self._queues[self.queue_key(queued.origin.backend)].remove(job_id)
            self.quotas.left_queue(queued.owner, queued.size_bytes)
            record = queued.record
        if record is not None:
            self.quotas.ended(record.owner_fingerprint)
            key = (record.owner_fingerprint, record.idempotency_key)
            if record.idempotency_key and self._keys.get(key) == job_id:
                del self._keys[key]
        return record

    def retag(self, job_id: str, tags: tuple[tuple[str, str], ...]) -> None:
        """A job's tags changed: every record of it that memory holds carries them."""
        running = self._running.get(job_id)
        if running is not None:
            self._running[job_id] = replace(running, tags=tags)
        elif (queued := self._claimed.get(job_id) or self._queued(job_id)) is not None:
            queued.record = replace(queued.record, tags=tags)
        finished = self._finished.get(job_id)
        if finished is not None:
            self._finished[job_id] = replace(finished, tags=tags)

    def forget_finished(self, job_id: str) -> None:
        """Memory's final record of a job is stale (changed elsewhere)."""
        self._finished.pop(job_id, None)

    def remember_finished(self, record: JobRecord) -> None:
        """Keep a final record for status polls, the oldest dropped past the bound."""
        self._finished[record.job_id] = record
        if len(self._finished) > FINISHED_CACHE_SIZE:
            self._finished.popitem(last=False)

    # --- what memory knows -------------------------------------------------------------
    def live(self, job_id: str) -> JobRecord | None:
        """The job if it is QUEUED or RUNNING here (a queued one's record rebuilt)."""
        running = self._running.get(job_id)
        if running is not None:
            return running
        queued = self._claimed.get(job_id) or self._queued(job_id)
        return queued.record if queued is not None else None

    def holds(self, job: QueuedJob) -> bool:
        """Whether ``job`` is still queued or claimed here (not started, ended or replaced)."""
        return (self._claimed.get(job.job_id) or self._queued(job.job_id)) is job

    def remembered(self, job_id: str) -> JobRecord | None:
        """The job from memory: live, or recently finished."""
        return self.live(job_id) or self._finished.get(job_id)

    def key_holder(self, owner: str, key: str) -> JobRecord | None:
        """The live job an owner's idempotency key names, if any."""
        job_id = self._keys.get((owner, key))
        return self.live(job_id) if job_id is not None else None

    def running_count(self) -> int:
        """How many live jobs are RUNNING."""
        return len(self._running)

    def live_count(self) -> int:
        """How many jobs are QUEUED or RUNNING."""
        return (len(self._running) + len(self._claimed)
                + sum(len(queue) for queue in self._queues.values()))

    def _queued(self, job_id: str) -> QueuedJob | None:
        """The job in whichever queue holds it (one per backend: a few lookups)."""
        for queue in self._queues.values():
            if (job := queue.get(job_id)) is not None:
                return job
        return None

    def _is_known(self, job_id: str) -> bool:
        """Live here, or finished here lately. Memory is then newer than a store read of
        the job: a recovery's second look reads a page, and a job on it may finish here
        before the page's jobs are admitted (it would stay RUNNING in memory)."""
        return self._is_live(job_id) or job_id in self._finished

    def _is_live(self, job_id: str) -> bool:
        return (job_id in self._running or job_id in self._claimed
                or self._queued(job_id) is not None)

    def _hold_key(self, job: QueuedJob) -> None:
        """Let the job's idempotency key name it (a plain job, kept compact, has none)."""
        if job.idempotency_key:
            self._keys[(job.owner, job.idempotency_key)] = job.job_id

    def snapshot(self) -> list[tuple[str, int, int, int]]:
        """Each queue's (name, jobs, program bytes, waiting nodes), for metrics."""
        return [(key, len(queue), queue.bytes_held, self.waiters.count(key))
                for key, queue in sorted(self._queues.items())]

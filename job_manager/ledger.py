"""The ledger: every piece of in-memory state kept per job, changed only together.

A live job is in several structures at once: a queue while QUEUED (the queue is its
index entry then: a queued job is held once, docs/design.md), the index of claimed or
running jobs otherwise, its owner's quota (concurrent jobs, and queued bytes while
queued), the key its idempotent submission holds, the watchdog's deadlines and its
node's latest heartbeat (while RUNNING), the change of it under way, and a waiting node
may have to be woken for it. Each operation here moves a job between states in all of
them at once, with no await in between, so nothing can see them disagree and no path
can forget one (docs/design.md). The phases of a job's life (job_manager/phases/)
decide; the ledger keeps, and is the only road to the quotas, the deadlines and the
waiting nodes.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from common.clock import Clock
from common.identity import Principal, Role
from common.single_flight import SingleFlight
from job_manager.limits import Limits, Quotas, QuotaUsage
from job_manager.model import JobRecord
from job_manager.queue import Gate, JobQueue, QueuedJob, SchedulingPolicy
from job_manager.throughput import DispatchRate
from job_manager.waiters import Waiters
from job_manager.watchdog import Due, Watchdog

UNIFIED_QUEUE = "*"  # the one queue's key with --unify-backends
FINISHED_CACHE_SIZE = 10_000  # recently finished records kept for status polls
# Recovered jobs queued between two turns of the event loop: about 0.1 s of work on a
# loaded machine, well under a lease renewal's margin (admit_in_slices).
ADMIT_SLICE = 10_000

# One idempotent submission request in flight: (owner, key, request digest).
Flight = tuple[str, str, str]


@dataclass(frozen=True, eq=False)
class Beat:
    """A node's latest heartbeat for a job, told apart from earlier ones by identity."""

    dequeued_at: datetime | None  # the hand-over it beats for


class Ledger:
    """Live jobs, recently finished ones, queues, quotas, idempotency keys, waiting nodes
    and deadlines of one scheduler."""

    def __init__(self, limits: Limits, policy: SchedulingPolicy, clock: Clock,
                 report_grace: timedelta, unify_backends: bool = False) -> None:
        self._quotas = Quotas(limits)
        self._waiters = Waiters()
        self._watchdog = Watchdog(clock)
        self._report_grace = report_grace
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
        self._submissions: SingleFlight[Flight, str] = SingleFlight()
        # Jobs whose change (a hand-over, a cancel, a report...) is under way: settled when done.
        self._changing: dict[str, asyncio.Future[None]] = {}
        self._beats: dict[str, Beat] = {}  # job → its latest beat, until its deadline passes

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
    def check_limits(self, principal: Principal, *, n_shots: int, timeout_s: float,
                     assignment_bytes: Callable[[], int], job_bytes: int) -> None:
        """Refuse a new job (SchedulerError) past a limit of its own: shots, timeout, the
        size of its hand-over (``assignment_bytes``, asked only near the limit)."""
        self._quotas.check_shots(n_shots)
        self._quotas.check_timeout(principal.role, timeout_s)
        self._quotas.check_assignable(assignment_bytes, job_bytes)

    def reserve(self, principal: Principal, request_bytes: int, program_bytes: int) -> None:
        """Hold a new job's place in its owner's quota, or refuse it (SchedulerError)."""
        self._quotas.reserve(principal, request_bytes, program_bytes)

    def submit_once(self, flight: Flight, submit: Callable[[], Coroutine[Any, Any, str]]) -> (
            Coroutine[Any, Any, str]):
        """Attempts of one idempotent request share one submission and its answer."""
        return self._submissions.run(flight, submit)

    def release(self, owner: str, program_bytes: int) -> None:
        """Give back a reservation whose job was never accepted."""
        self._quotas.ended(owner)
        self._quotas.left_queue(owner, program_bytes)

    def admit(self, job: QueuedJob, *, reserved: bool) -> bool:
        """Queue a stored job (``reserved``: its quota was held by :meth:`reserve`).

        A job already live is refused, never held twice; returns whether it was queued.
        """
        if self._is_live(job.job_id):
            if reserved:
                self.release(job.owner, job.size_bytes)
            return False
        if not reserved:
            self._quotas.count(job.owner, job.size_bytes)
        key = self.queue_key(job.origin.backend)
        self.open_queue(job.origin.backend)
        self._queues[key].push(job)
        self._hold_key(job)
        self._waiters.wake(key)
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
            self._quotas.count(job.owner, job.size_bytes)
            fresh[job.job_id] = job
            self._hold_key(job)
        for key, queued in by_queue.items():
            self._queues[key].extend(list(queued.values()))
            self._waiters.wake(key)
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
        self._quotas.count(record.owner_fingerprint, 0)
        self._watchdog.watch(record.job_id, self.report_deadline(record), record.dequeued_at)

    # --- a job moves ---------------------------------------------------------------------
    def claim_next(self, backend: str, gate: Gate | None = None) -> QueuedJob | None:
        """The job that goes next from ``backend``'s queue (among those ``gate`` admits),
        claimed: no one else gets it."""
        queue = self.queue(backend)
        job = queue.pop(gate) if queue is not None else None
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
        self._waiters.wake(key)

    def handed_over(self, job: QueuedJob, running: JobRecord) -> None:
        """A claimed job is RUNNING: out of the queue's bytes, watched, counted as a hand-over."""
        self._quotas.left_queue(job.owner, job.size_bytes)
        self._claimed.pop(job.job_id, None)
        self._running[job.job_id] = running
        self._watchdog.watch(job.job_id, self.report_deadline(running), running.dequeued_at)
        self._rates[self.queue_key(running.backend)].record(self._clock.monotonic())

    def drop_claim(self, job: QueuedJob) -> None:
        """A claimed job will not come back to its queue (cancelled, or changed elsewhere);
        it stays live until it :meth:`finished` or memory will :meth:`forget` it."""
        self._quotas.left_queue(job.owner, job.size_bytes)

    def given_back(self, job: QueuedJob, queued: JobRecord) -> None:
        """A RUNNING job no node received is QUEUED again, in its place at the head."""
        job.become(queued)
        self._running.pop(job.job_id, None)
        self._quotas.rejoined_queue(job.owner, job.size_bytes)
        self.put_back(job)

    def requeued(self, job: QueuedJob) -> None:
        """A RUNNING job whose node vanished is QUEUED again (still live, still counted)."""
        self._running.pop(job.job_id, None)
        self._quotas.rejoined_queue(job.owner, job.size_bytes)
        key = self.queue_key(job.origin.backend)
        self.open_queue(job.origin.backend)
        self._queues[key].push(job)
        self._waiters.wake(key)

    # --- a job leaves ------------------------------------------------------------------
    def finished(self, record: JobRecord) -> None:
        """A job reached a final status: out of every structure, kept among the finished."""
        # A job this process never held (another process started it) holds no slot here.
        self._remove(record.job_id)
        self.remember_finished(record)

    def forget(self, job_id: str) -> JobRecord | None:
        """Memory was wrong about a job (the store says otherwise): drop it, free its quota."""
        return self._remove(job_id)

    def _remove(self, job_id: str) -> JobRecord | None:
        """Out of every live structure, its quota slot freed; the record it had, if live."""
        record = self._running.pop(job_id, None)
        if record is None and (claimed := self._claimed.pop(job_id, None)) is not None:
            record = claimed.record
        if record is None and (queued := self._queued(job_id)) is not None:
            # Still queued here though it ended elsewhere (another process ran it).
            self._queues[self.queue_key(queued.origin.backend)].remove(job_id)
            self._quotas.left_queue(queued.owner, queued.size_bytes)
            record = queued.record
        if record is not None:
            self._quotas.ended(record.owner_fingerprint)
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
            queued.become(replace(queued.record, tags=tags))
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

    def live_jobs_of(self, owner_fingerprint: str, backend: str) -> int:
        """How many of the owner's jobs for ``backend`` are QUEUED or RUNNING here."""
        queue = self.queue(backend)
        queued = queue.count_of(owner_fingerprint, backend) if queue is not None else 0
        others = [*self._running.values(), *(job.record for job in self._claimed.values())]
        return queued + sum(1 for r in others
                            if r.owner_fingerprint == owner_fingerprint and r.backend == backend)

    def running_ids(self) -> frozenset[str]:
        """The ids of the live jobs that are RUNNING."""
        return frozenset(self._running)

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

    # --- deadlines and heartbeats (the watchdog is kept here alone) ----------------------
    def report_deadline(self, record: JobRecord) -> datetime | None:
        """When a silent node's job times out; None when that lies beyond what a date can
        hold: the wire allows any timeout, and such a job has no deadline (docs/job-rules.md,
        rule 18). Heartbeats still watch it."""
        assert record.dequeued_at is not None
        try:
            return record.dequeued_at + timedelta(seconds=record.timeout_s) + self._report_grace
        except OverflowError:
            return None

    def watch_again(self, running: JobRecord) -> None:
        """A lost node's job that could not be queued again (the store failed) is watched
        once more: one grace from now it ends TIMEOUT or is tried again."""
        self._watchdog.watch(running.job_id, self._clock.now() + self._report_grace,
                             running.dequeued_at)

    def beat(self, job_id: str, dequeued_at: datetime | None, timeout_s: float) -> bool:
        """A node beat for the job's hand-over at ``dequeued_at``: lost ``timeout_s`` from
        now unless it beats again. Returns whether this was the job's first beat here."""
        first = job_id not in self._beats
        beat = self._beats[job_id] = Beat(dequeued_at)
        self._watchdog.watch_for(job_id, timeout_s, beat)
        return first

    def latest_beat(self, job_id: str, beat: Beat) -> bool:
        """Whether ``beat`` is still the job's latest."""
        return self._beats.get(job_id) is beat

    def beat_over(self, job_id: str, beat: Beat) -> None:
        """The deadline of ``beat`` was dealt with: forget it, unless the node beat again."""
        if self._beats.get(job_id) is beat:
            del self._beats[job_id]

    def due(self) -> list[Due]:
        """The deadlines that have passed, taken off the watch."""
        return self._watchdog.due()

    def retry(self, due: Due) -> None:
        """A passed deadline whose verdict failed: due again a little later."""
        self._watchdog.retry(due)

    async def until_next_deadline(self) -> None:
        """Sleep until the next deadline may have passed (at most a few seconds)."""
        await self._watchdog.until_next()

    def deadlines_watched(self) -> int:
        """How many deadlines are watched (some of jobs over since: skipped when due)."""
        return len(self._watchdog)

    # --- changes under way ------------------------------------------------------------
    def begin_change(self, job_id: str) -> asyncio.Future[None]:
        """A change of the job is under way until the returned future is settled
        (:meth:`end_change`); other calls about the job wait for it (:meth:`change_of`)."""
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changing[job_id] = settled
        return settled

    def end_change(self, job_id: str, settled: asyncio.Future[None]) -> None:
        """The change begun with ``settled`` is over."""
        if self._changing.get(job_id) is settled:
            del self._changing[job_id]
        settled.set_result(None)

    def change_of(self, job_id: str) -> asyncio.Future[None] | None:
        """The change of the job under way, if any: settled when it is over."""
        return self._changing.get(job_id)

    # --- waiting nodes ------------------------------------------------------------------
    async def wait_for_job(self, backend: str, timeout_s: float) -> bool:
        """Park a node asking ``backend`` for work until a job is queued (True) or the time
        is up (False)."""
        return await self._waiters.wait(self.queue_key(backend), timeout_s)

    def waiting_nodes(self, backend: str) -> int:
        """How many nodes wait for ``backend``'s queue."""
        return self._waiters.count(self.queue_key(backend))

    def wake_all(self) -> None:
        """Wake every waiting node to look again (who may be handed a job has changed)."""
        self._waiters.wake_all()

    def stop_waiting(self) -> None:
        """Release every waiting node with an empty answer; later waits return at once."""
        self._waiters.close()

    # --- quotas ----------------------------------------------------------------------------
    def usage(self, owner_fingerprint: str, role: Role) -> QuotaUsage:
        """What the owner holds of its quotas now, and the limits of its role."""
        return self._quotas.usage(owner_fingerprint, role)

    def snapshot(self) -> list[tuple[str, int, int, int]]:
        """Each queue's (name, jobs, program bytes, waiting nodes), for metrics."""
        return [(key, len(queue), queue.bytes_held, self._waiters.count(key))
                for key, queue in sorted(self._queues.items())]

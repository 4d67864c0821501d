"""Recovery: a term's reload of the store into memory, and the programs read ahead.

After a restart or a takeover, QUEUED jobs go back into their queues in their old order
(their programs read later, a batch at a time) and RUNNING ones are watched; a leader's
term first raises its fence (docs/replicas.md, "Fence"). Jobs whose backend is gone, or
whose program is, FAIL (docs/job-rules.md, rule 4).
"""

from __future__ import annotations

import asyncio
import itertools
import logging

from common import collector
from job_manager.model import JobRecord, JobStatus
from job_manager.phases.core import JobCore, changeable
from job_manager.queue import QueuedJob
from job_manager.stores import StoreError
from message_manager import SchedulerError

log = logging.getLogger(__name__)

MISSING_PROGRAM = "the job's program was missing after a restart"
PREFETCH_BATCH = 256  # recovered jobs whose programs one read fetches, beside the records


class Recovery:
    """Reloads the store at the start of a term and reads programs ahead."""

    def __init__(self, core: JobCore) -> None:
        self._core = core
        self._ledger = core.ledger
        self._fence_raised = False

    async def recover(self) -> None:
        """Reload QUEUED jobs into their queues and watch RUNNING ones, after a restart.

        A leader's term first raises its fence, so that nothing the last leader writes
        from then on lands unseen (docs/replicas.md, "Fence")."""
        store, fence = self._core.store, self._core.fence
        if fence is not None and not self._fence_raised:
            await store.raise_fence(fence)
            self._fence_raised = True
        turns = self._core.turns
        await turns.calendar.load()
        await turns.sessions.load()
        async for record in store.list_by_status(JobStatus.RUNNING):
            if changeable(record):
                self._ledger.admit_running(record)
        # Queued without their programs, read later (prefetch_programs, or at the
        # hand-over), and all at once: a restart serves at once, whatever the number.
        # Plain records come lean and become compact jobs with no record built.
        found = []
        with collector.paused():
            async for stored in store.list_queued():
                if isinstance(stored, JobRecord) and not changeable(stored):
                    continue  # a newer format's job: left to a newer leader (docs/records.md)
                job = QueuedJob.recovered(stored)
                # Its record is built only when its backend is gone (queueable FAILS it).
                known = self._ledger.queue(job.origin.backend) is not None
                if known or await self.queueable(job.record):
                    found.append(job)
            requeued = await self._ledger.admit_in_slices(found)
        log.info("recovered %d queued and %d running jobs", requeued,
                 self._ledger.running_count())

    async def queue_stored(self, record: JobRecord) -> None:
        """Queue a stored QUEUED job this process does not hold yet (its program read later)."""
        if self._ledger.live(record.job_id) is None and await self.queueable(record):
            self._ledger.admit(QueuedJob(record, None), reserved=False)  # once, even if raced

    async def queueable(self, record: JobRecord) -> bool:
        """Whether a stored QUEUED job has a queue here; one whose backend is gone FAILS."""
        if not changeable(record):
            return False
        if self._ledger.queue(record.backend) is not None:
            return True
        await self._core.fail_unrecoverable(record, f"backend {record.backend} is no longer known")
        return False

    async def prefetch_programs(self, concurrency: int = 8) -> int:
        """Read the programs of recovered jobs, the oldest first, so that their hand-overs
        wait for no store; returns how many were read. A job whose program is gone FAILS
        now. Jobs handed over, cancelled or failed meanwhile are skipped (a hand-over
        reads its own)."""
        waiting = iter(dict.fromkeys(
            job for backend in self._core.backends.known()
            if (queue := self._ledger.queue(backend)) is not None
            for job in queue.oldest_first() if job.program is None))
        # Beside the records (standalone), one query reads a batch of programs; other
        # stores are read a program at a time.
        size = PREFETCH_BATCH if self._core.beside_records is not None else 1
        read = 0

        # ``concurrency`` readers share one iterator, each taking the next batch: no task
        # per job, which for a million recovered jobs cost gigabytes and held the event
        # loop for seconds before the first call could be answered.
        async def reader() -> None:
            nonlocal read
            while batch := list(itertools.islice(waiting, size)):
                found = await self._programs_of(batch)
                for job in batch:
                    given = await self._read_ahead(job, found.get(job.job_id))
                    read += given  # after the await: ``read`` may have grown meanwhile

        await asyncio.gather(*(reader() for _ in range(concurrency)))
        return read

    async def _programs_of(self, batch: list[QueuedJob]) -> dict[str, bytes]:
        """The programs of a batch of jobs still waiting for theirs, in one read where the
        store can; {} where it cannot (each is then read alone)."""
        wanted = [job.job_id for job in batch if self._waits_for_program(job)]
        if self._core.beside_records is None or len(wanted) < 2:
            return {}
        try:
            return await self._core.beside_records.get_inputs(wanted)
        except StoreError as exc:
            log.warning("programs of %d jobs not read together: %s", len(wanted), exc)
            return {}

    async def _read_ahead(self, job: QueuedJob, program: bytes | None) -> int:
        """Give a queued job its program (read now unless given); 1 when it got one."""
        if not self._waits_for_program(job):
            return 0
        if program is None:
            try:
                program = await self._core.payloads.get_input(job.job_id)
            except StoreError as exc:
                log.warning("program of job %s not read ahead: %s", job.job_id, exc)
                return 0
            if program is None:
                await self._fail_missing(job)
                return 0
            if not self._waits_for_program(job):
                return 0  # handed over (or ended) while its program was read
        job.give_program(program)
        return 1

    def _waits_for_program(self, job: QueuedJob) -> bool:
        """Still queued here without its program (not handed over, cancelled or failed)."""
        return job.program is None and self._ledger.holds(job)

    async def _fail_missing(self, job: QueuedJob) -> None:
        claimed = self._ledger.claim(job.record)
        if claimed is None:
            return  # taken meanwhile: its hand-over sees the program is gone
        try:
            await self._core.change(job.job_id, self._core.fail_claimed(claimed, MISSING_PROGRAM))
        except (SchedulerError, StoreError) as exc:
            log.warning("job %s without its program stays queued: %s", job.job_id, exc)

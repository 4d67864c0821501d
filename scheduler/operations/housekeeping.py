"""Standalone mode's data directory, kept from growing for ever and from filling up unseen.

AWS mode has DynamoDB's TTL and the bucket's lifecycle rules; a data directory has this:

- at start and then every ``interval_s``: payload files that no job record names (a
  crash between removing an expired record and its files, or an older version's
  program written before its record) and temporary files left by a crash,
  once older than ``grace_s`` so no submission or upload in flight is touched; and
  finished jobs older than the retention period, record and files;
- every minute: the free space of the data directory's disk, as a metric, and in
  /healthz's text once it is under ``min_free_bytes`` (before writes start failing).

Every removal is logged with its count. A job database restored from an older copy
does not name the files of jobs submitted after that copy: files newer than its newest
record are never removed, and the warning says how many were kept; queued jobs whose
result is already here are not run again (docs/design.md, "Restoring a standalone data
directory").
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from common.clock import Clock
from job_manager.model import JobRecord, JobStatus
from job_manager.stores.local_payload_store import LocalPayloadStore
from job_manager.stores.sqlite_job_store import SqliteJobStore

log = logging.getLogger(__name__)

FREE_SPACE_INTERVAL_S = 60.0
ALREADY_RUN = ("its result was already uploaded while the job database still had it queued "
               "(a job database restored from an older copy?); not run again")


@dataclass(frozen=True)
class Retention:
    """How long finished jobs are kept, and how much free space is too little."""

    finished_jobs: timedelta = timedelta(days=30)  # as AWS mode's job_expiry
    min_free_bytes: int = 1024**3
    interval_s: float = 6 * 3600.0
    grace_s: float = 600.0  # files younger than this may belong to work in flight


class Housekeeping:
    """Sweeps and measures one data directory in the background."""

    def __init__(self, data_dir: Path, jobs: SqliteJobStore, payloads: LocalPayloadStore,
                 clock: Clock, retention: Retention) -> None:
        self._data_dir = data_dir
        self._jobs = jobs
        self._payloads = payloads
        self._clock = clock
        self._retention = retention
        self.free_bytes: int | None = None

    @property
    def low_on_space(self) -> bool:
        """Whether the data directory's disk has less free space than it should."""
        return self.free_bytes is not None and self.free_bytes < self._retention.min_free_bytes

    async def sweep_forever(self) -> None:
        """Sweep now and every interval (supervised)."""
        await self._every(self._retention.interval_s, self.sweep)

    async def measure_forever(self) -> None:
        """Measure the free space now and every minute (supervised)."""
        await self._every(FREE_SPACE_INTERVAL_S, self.measure)

    async def sweep(self) -> None:
        """Remove orphaned and temporary payload files, then expired finished jobs."""
        newest = await self._jobs.newest_submission()
        orphans = await self._payloads.sweep(self._jobs.existing, self._retention.grace_s,
                                             newest)
        if orphans.files or orphans.temporary:
            log.warning("removed %d payload files of %d jobs that no job record names, and "
                        "%d temporary files left by a crash", orphans.files, orphans.jobs,
                        orphans.temporary)
        if orphans.kept_files:
            newest_text = ("every job record (there is none)" if newest is None else
                           f"the newest job record, submitted {newest:%Y-%m-%dT%H:%M:%S%z}")
            log.warning(
                "kept %d payload files of %d jobs that no job record names: %d of them are "
                "newer than %s, as when the job database was restored from an older copy; "
                "move them out of the payloads directory once they are no longer wanted",
                orphans.kept_files, orphans.kept_jobs, orphans.newer_files, newest_text)
        cutoff = self._clock.now() - self._retention.finished_jobs
        expired = await self._jobs.delete_finished_before(cutoff)
        for job_id in expired:
            await self._payloads.delete_job_files(job_id)
        if expired:
            log.info("removed %d jobs that finished before %s, with their files", len(expired),
                     cutoff.isoformat(timespec="seconds"))

    async def fail_already_run(self) -> int:
        """Before recovery: a QUEUED job whose result is already here ran after the copy
        the job database was restored from; it FAILS rather than run again. Returns how
        many. A job queued again after its node vanished may hold a result of its earlier
        attempt, and is left to run (the next upload replaces it)."""
        with_results = await self._payloads.jobs_with_results()
        unfinished = await self._jobs.unfinished_among(sorted(with_results))
        failed = 0
        for record in unfinished:
            if record.status is JobStatus.QUEUED and not record.requeues:
                failed += await self._fail(record)
        running = sum(1 for record in unfinished if record.status is JobStatus.RUNNING)
        if running:
            log.warning("%d RUNNING jobs already have a result (uploaded before a restart, or "
                        "the job database was restored from an older copy): each ends with "
                        "its node's report, or times out", running)
        return failed

    async def _fail(self, record: JobRecord) -> int:
        failed = replace(record, status=JobStatus.FAILED, status_detail=ALREADY_RUN,
                         finished_at=self._clock.now())
        if not await self._jobs.transition(record, failed):
            return 0
        log.warning("job %s FAILED: %s", record.job_id, ALREADY_RUN)
        return 1

    async def measure(self) -> None:
        """Read the free space of the data directory's disk."""
        usage = await asyncio.to_thread(shutil.disk_usage, self._data_dir)
        was_low = self.low_on_space
        self.free_bytes = usage.free
        if self.low_on_space and not was_low:
            log.warning("the data directory's disk has %d MB free, under %d MB: submissions "
                        "will fail once it is full", usage.free // 2**20,
                        self._retention.min_free_bytes // 2**20)

    async def _every(self, interval_s: float, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await work()
            except Exception:  # the next round tries again
                log.exception("housekeeping failed; trying again in %.0f s", interval_s)
            await asyncio.sleep(interval_s)

"""Standalone mode's data directory, kept from growing for ever and from filling up unseen.

AWS mode has DynamoDB's TTL and the bucket's lifecycle rules; a data directory has this:

- at start and then every ``interval_s``: payload files that no job record names (a
  crash between writing a program and its record) and temporary files left by a crash,
  once older than ``grace_s`` so no submission or upload in flight is touched; and
  finished jobs older than the retention period, record and files;
- every minute: the free space of the data directory's disk, as a metric, and in
  /healthz's text once it is under ``min_free_bytes`` (before writes start failing).

Every removal is logged with its count: a data directory restored from an older copy
has files its database no longer names, and the operator must see them go.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from common.clock import Clock
from job_manager.stores.local_payload_store import LocalPayloadStore
from job_manager.stores.sqlite_job_store import SqliteJobStore

log = logging.getLogger(__name__)

FREE_SPACE_INTERVAL_S = 60.0


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
        orphans = await self._payloads.sweep(self._jobs.existing, self._retention.grace_s)
        if orphans.files:
            log.warning("removed %d payload files of %d jobs that no job record names, and "
                        "%d temporary files left by a crash", orphans.files, orphans.jobs,
                        orphans.temporary)
        cutoff = self._clock.now() - self._retention.finished_jobs
        expired = await self._jobs.delete_finished_before(cutoff)
        for job_id in expired:
            await self._payloads.delete_job_files(job_id)
        if expired:
            log.info("removed %d jobs that finished before %s, with their files", len(expired),
                     cutoff.isoformat(timespec="seconds"))

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

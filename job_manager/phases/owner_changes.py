"""An owner's changes: cancelling a queued job, and replacing a job's tags.

Both are changes like any other (docs/job-rules.md, rule 2): they wait for a change of
the job under way, claim it in memory, then compare-and-set it in the store. An admin's
change of another's job is audited with how it ended (docs/audit.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from common import audit
from common.identity import Principal
from job_manager.model import JobRecord, JobStatus
from job_manager.phases.core import JobCore, store_failed
from job_manager.queue import QueuedJob
from job_manager.stores import StoreError
from job_manager.tags import Tags
from message_manager import SchedulerError

TAG_ATTEMPTS = 3  # a job changing status under a SetJobTags is read again this often


class OwnerChanges:
    """Cancels and tags jobs on their owner's (or an admin's) word."""

    def __init__(self, core: JobCore) -> None:
        self._core = core
        self._ledger = core.ledger

    async def cancel(self, principal: Principal, job_id: str) -> JobRecord:
        """Cancel a queued job; a job already handed over cannot be cancelled.

        A refusal is audited here, a cancel where it is made, so a caller that hangs up
        meanwhile cannot leave it out.
        """
        record = await self._core.visible(principal, job_id, audit_as=None)
        try:
            return await self._cancel_visible(principal, record)
        except SchedulerError as exc:
            audit.cross_user(principal, "job.cancel", record, exc.code)
            raise

    async def _cancel_visible(self, principal: Principal, record: JobRecord) -> JobRecord:
        job_id = record.job_id
        record = await self._after_change(principal, record)
        claimed = self._ledger.claim(record)
        if claimed is None and record.read_only:  # a newer scheduler's (docs/records.md)
            raise SchedulerError("record_too_new", job_id=job_id,
                                 format_version=record.format_version)
        if claimed is None:
            # Not in a queue, and no change under way: its status says why.
            raise SchedulerError("job_not_cancellable", job_id=job_id, status=record.status.value)
        return await asyncio.shield(
            self._core.change(job_id, self._cancel_claimed(claimed, principal)))

    async def _cancel_claimed(self, job: QueuedJob, principal: Principal) -> JobRecord:
        core = self._core
        cancelled = replace(
            job.record,
            status=JobStatus.CANCELLED,
            finished_at=core.clock.now(),
            status_detail=f"cancelled by {principal.log_name}",
            cancelled_by=principal.fingerprint,
        )
        try:
            changed = await core.transition(job.record, cancelled)
        except StoreError as exc:
            self._ledger.put_back(job)
            raise store_failed(f"job {job.job_id} not cancelled", exc) from None
        self._ledger.drop_claim(job)
        if not changed:
            stored = await core.believe_store(job.job_id)
            status = stored.status.value if stored else "missing"
            raise SchedulerError("job_not_cancellable", job_id=job.job_id, status=status)
        core.finished(cancelled)
        audit.cross_user(principal, "job.cancel", cancelled)
        return cancelled

    async def set_tags(self, principal: Principal, job_id: str, tags: Tags) -> JobRecord:
        """Replace a job's tags, whatever its status, while its record exists.

        Memory takes the tags before the store does, with no await in between, so a
        change of status made meanwhile from memory carries them too; a status changed
        elsewhere (the store's compare-and-set fails) is read again and tagged anew.
        """
        record = await self._core.visible(principal, job_id, audit_as=None)
        try:
            tagged = await self._tag(principal, record, tags)
        except SchedulerError as exc:
            audit.cross_user(principal, "job.set_tags", record, exc.code)
            raise
        audit.cross_user(principal, "job.set_tags", tagged)
        return tagged

    async def _tag(self, principal: Principal, record: JobRecord, tags: Tags) -> JobRecord:
        job_id = record.job_id
        for attempt in range(TAG_ATTEMPTS):
            if attempt:
                record = await self._core.visible(principal, job_id, audit_as=None)
            record = await self._after_change(principal, record)
            tagged = replace(record, tags=tags)
            self._ledger.retag(job_id, tags)
            try:
                stored = await self._core.transition(record, tagged)
            except StoreError as exc:
                self._ledger.retag(job_id, record.tags)
                raise store_failed(f"tags of job {job_id} could not be stored", exc) from None
            if stored:
                return tagged
            self._ledger.retag(job_id, record.tags)
            self._ledger.forget_finished(job_id)  # stale: read the store next time
        raise SchedulerError("store_failed")

    async def _after_change(self, principal: Principal, record: JobRecord) -> JobRecord:
        """The job as it is once no change of it is under way (a hand-over, a cancel):
        answered from what that change led to, not from a view about to change."""
        while (under_way := self._ledger.change_of(record.job_id)) is not None:
            await asyncio.shield(under_way)
            record = await self._core.visible(principal, record.job_id, audit_as=None)
        return record

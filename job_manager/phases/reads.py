"""Reads: a job's status and result as its owner may see them, where it stands in its
queue, and what memory counts (queues, live jobs, an owner's quota).

Live jobs and recently finished ones are answered from memory, others from the store
(docs/job-rules.md, rule 7); another's job answers exactly as one that does not exist.
"""

from __future__ import annotations

from datetime import timedelta

from common.clock import spoken_duration
from common.identity import Principal, Role
from job_manager.limits import QuotaUsage
from job_manager.model import JobRecord, JobStatus
from job_manager.phases.core import JobCore
from job_manager.stores import SignedUrl
from message_manager import SchedulerError

DOWNLOAD_URL_LIFETIME = timedelta(minutes=3)


class Reads:
    """Answers what users and operators ask about jobs; changes nothing."""

    def __init__(self, core: JobCore, unify_backends: bool) -> None:
        self._core = core
        self._ledger = core.ledger
        self._unify = unify_backends

    async def status(self, principal: Principal, job_id: str,
                     audit_as: str | None = "job.status") -> JobRecord:
        """The job as its owner (or an admin) may see it; an admin's read of another's job
        is audited as ``audit_as`` (None: the caller audits what it does with it)."""
        return await self._core.visible(principal, job_id, audit_as)

    def knows_final(self, job_id: str, owner_fingerprint: str) -> bool:
        """Whether memory holds the final status (which never changes) of this owner's job.
        Another's job is not told apart from an unknown one, not even by where it is read."""
        record = self._ledger.remembered(job_id)
        return (record is not None and record.status.is_final
                and record.owner_fingerprint == owner_fingerprint)

    def status_detail(self, record: JobRecord) -> str:
        """What a user is told about where the job stands."""
        if record.status is JobStatus.QUEUED:
            detail = self._queue_detail(record)
            if record.requeues:
                detail += f"; queued again {record.requeues} times after its node vanished"
            return detail
        if record.status is JobStatus.RUNNING:
            return f"running on {record.backend}"
        return record.status_detail

    def _queue_detail(self, record: JobRecord) -> str:
        queue = self._ledger.queue(record.backend)
        position = queue.position(record.job_id) if queue is not None else None
        if queue is None or position is None:
            return f"queued on {record.backend}"
        where = "all backends" if self._unify else record.backend
        detail = f"queued: {_ordinal(position)} of {len(queue)} on {where}"
        seconds_per_job = self._ledger.seconds_per_job(record.backend)
        if seconds_per_job is not None:
            detail += f", about {spoken_duration(position * seconds_per_job)}"
        because = self._core.turns.waiting_because(record, self._core.clock.now())
        return f"{detail}; {because}" if because else detail

    async def result(self, principal: Principal, job_id: str) -> tuple[JobRecord, SignedUrl | None]:
        """The finished job and, when it completed, a short-lived download URL."""
        record = await self._core.visible(principal, job_id, "job.result")
        if not record.status.is_final:
            raise SchedulerError("result_not_ready", job_id=job_id, status=record.status.value)
        if record.status is not JobStatus.COMPLETED:
            return record, None
        return record, self._core.payloads.download_url(job_id, DOWNLOAD_URL_LIFETIME)

    def usage(self, owner_fingerprint: str, role: Role) -> QuotaUsage:
        """What the owner holds of its quotas now (live jobs, queued bytes) and its limits."""
        return self._ledger.usage(owner_fingerprint, role)

    def queue_length(self, backend: str) -> int:
        """How many jobs wait for ``backend``."""
        queue = self._ledger.queue(backend)
        return len(queue) if queue is not None else 0

    def live_jobs(self) -> int:
        """How many jobs are QUEUED or RUNNING."""
        return self._ledger.live_count()

    def queue_snapshot(self) -> list[tuple[str, int, int, int]]:
        """Each queue's (name, jobs, program bytes, waiting nodes), for metrics."""
        return self._ledger.snapshot()


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"

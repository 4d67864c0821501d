"""Submission: a new job is durable before it is queued, and a keyed retry makes nothing new.

``job_id`` is answered only after the program and the QUEUED record are stored; if a
write fails, every reservation is released and nothing is left half-made
(docs/job-rules.md, rule 1). With an idempotency key, a retry of an accepted submission
gets the first job's id (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from common.caller import on_own_behalf
from common.identity import Principal
from job_manager.model import JobRecord, JobStatus, new_job_id
from job_manager.observer import UNKNOWN_BACKEND
from job_manager.phases.core import UPLOAD_URL_LIFETIME, JobCore, object_tags, store_failed
from job_manager.phases.inputs import JobSpec
from job_manager.phases.recovery import Recovery
from job_manager.queue import QueuedJob
from job_manager.stores import Deposed, KeyTaken, StoreError
from message_manager import SchedulerError

log = logging.getLogger(__name__)

# An AssignNextJobResponse beside its program, settings and URL: the job id, the URL's
# expiry, the fields' tags and lengths (measured: under 100 bytes), with room to spare.
ASSIGNMENT_FRAMING_BYTES = 256


class Submission:
    """Accepts jobs: durable first, then queued."""

    def __init__(self, core: JobCore, recovery: Recovery, idempotency_window: timedelta) -> None:
        self._core = core
        self._ledger = core.ledger
        self._recovery = recovery
        self._idempotency_window = idempotency_window

    async def submit(self, principal: Principal, spec: JobSpec) -> str:
        """Accept a job: durable first, then queued; returns its id.

        With an idempotency key, a retry of an accepted submission (same token and
        key, within the window) returns the first job's id and makes nothing new; the key
        sent with another request is refused (``idempotency_key_reused``).
        """
        if not spec.idempotency_key:
            return await self._submit_new(principal, spec)
        # Attempts of one request share one flight; another request with the key runs
        # apart, and meets the first one's record.
        flight = (principal.fingerprint, spec.idempotency_key, spec.request_digest)
        return await self._ledger.submit_once(flight, lambda: self._submit_once(principal, spec))

    async def _submit_once(self, principal: Principal, spec: JobSpec) -> str:
        key = (principal.fingerprint, spec.idempotency_key)
        window_start = self._core.clock.now() - self._idempotency_window
        earlier = self._ledger.key_holder(*key)
        if earlier is None:
            try:
                earlier = await self._core.store.find_by_idempotency_key(*key)
            except StoreError as exc:
                log.error("idempotency key could not be looked up: %s", exc)
                raise SchedulerError("submission_not_stored") from None
        # A key is held by a job submitted less than the window ago, as the stores hold it.
        if earlier is None or earlier.submitted_at <= window_start:
            return await self._submit_new(principal, spec)
        return await self._adopt(earlier, spec.request_digest)

    async def _adopt(self, earlier: JobRecord, request_digest: str) -> str:
        """Answer a keyed retry with the job its key already names; the key sent with
        another request is refused, as payment APIs refuse it (docs/protocol.md)."""
        # A key claimed by an earlier version has no digest: any request matches it.
        if earlier.request_digest and earlier.request_digest != request_digest:
            raise SchedulerError("idempotency_key_reused", sent=repr(earlier.idempotency_key),
                                 job_id=earlier.job_id)
        if earlier.status is JobStatus.QUEUED and self._ledger.live(earlier.job_id) is None:
            # Stored by an attempt whose answer was lost (another process, or before a
            # restart that has not seen it): queue it now.
            try:
                await self._recovery.queue_stored(earlier)
            except StoreError as exc:
                raise store_failed(f"job {earlier.job_id} could not be queued again",
                                   exc) from None
        log.info("job %s submitted again with its idempotency key; not duplicated",
                 earlier.job_id)
        return earlier.job_id

    async def _submit_new(self, principal: Principal, spec: JobSpec) -> str:
        core = self._core
        try:
            core.check_open(spec.backend, principal)
            self._check_session(principal, spec)
            await self._check_budget(principal, spec)
            job_id = new_job_id()
            self._ledger.check_limits(
                principal, n_shots=spec.n_shots, timeout_s=spec.timeout_s,
                assignment_bytes=lambda: self._assignment_bytes(job_id, spec),
                job_bytes=len(spec.program) + len(spec.settings))
            self._ledger.reserve(principal, spec.request_bytes, len(spec.program))
        except SchedulerError as exc:
            known = spec.backend if core.backends.is_known(spec.backend) else UNKNOWN_BACKEND
            core.observer.refused(known, principal.role.value, exc.code)
            raise
        now = core.clock.now()
        record = JobRecord(
            job_id=job_id,
            status=JobStatus.QUEUED,
            backend=spec.backend,
            owner_name=principal.name,
            owner_fingerprint=principal.fingerprint,
            role=principal.role,
            settings=spec.settings,
            timeout_s=spec.timeout_s,
            input_size_bytes=len(spec.program),
            sdk_version=spec.sdk_version,
            save_job=spec.save_job,
            idempotency_key=spec.idempotency_key,
            request_digest=spec.request_digest,
            tags=spec.tags,
            submitted_at=now,
            queued_at=now,
        )
        # Shielded: once the writes begin, a caller hanging up cannot leave a stored
        # job out of its queue.
        return await asyncio.shield(self._accept(record, spec.program))

    def _check_session(self, principal: Principal, spec: JobSpec) -> None:
        """A session named by x-mqc3-session must be the caller's open one on the backend
        (without the header, an open session takes the job all the same)."""
        if not spec.session_id:
            return
        session = self._core.turns.sessions.open_of(principal.fingerprint, spec.backend)
        if session is None or session.session_id != spec.session_id:
            raise SchedulerError("session_header_invalid", session_id=spec.session_id[:64],
                                 backend=spec.backend)

    async def _check_budget(self, principal: Principal, spec: JobSpec) -> None:
        """Refuse a job that would start past its owner's budget (job_manager/budgets.py)."""
        budgets = self._core.turns.budgets
        if budgets.budget_of(principal) is None:
            return
        try:
            left = await budgets.left(principal, self._core.clock.now())
        except StoreError as exc:
            log.error("budget use of %s could not be read: %s", principal.log_name, exc)
            raise SchedulerError("submission_not_stored") from None
        refusal = left.refusal(spec.n_shots) if left is not None else None
        if refusal is not None:
            raise refusal

    def _assignment_bytes(self, job_id: str, spec: JobSpec) -> int:
        """About how large the job's AssignNextJobResponse will be (its URL is signed alike,
        for its last hand-over, whose key is the longest)."""
        max_requeues = self._core.max_requeues
        upload = self._core.payloads.upload_url(job_id, UPLOAD_URL_LIFETIME,
                                                max_requeues if max_requeues else None)
        return len(spec.program) + len(spec.settings) + len(upload.url) + ASSIGNMENT_FRAMING_BYTES

    async def _accept(self, record: JobRecord, program: bytes) -> str:
        core = self._core
        try:
            await self._store_new(record, program)
        except Deposed:
            # This replica was deposed: nothing was stored; the call goes to the new leader.
            self._ledger.release(record.owner_fingerprint, len(program))
            await core.forget_input(record.job_id)
            raise
        except KeyTaken:
            # Another submission with this key was stored first (another process, or
            # one this process no longer remembers): that one is the job.
            self._ledger.release(record.owner_fingerprint, len(program))
            await core.forget_input(record.job_id)
            return await self._adopt(await self._stored_key_holder(record),
                                     record.request_digest)
        except StoreError as exc:
            if not await self._was_stored(record.job_id):
                self._ledger.release(record.owner_fingerprint, len(program))
                log.error("job %s not accepted, its store write failed: %s", record.job_id, exc)
                raise SchedulerError("submission_not_stored") from None
            # The record was written; only the answer was lost. The job is durable.
        self._ledger.admit(QueuedJob(record, program), reserved=True)
        core.observer.submitted(record)
        log.info(
            "job %s QUEUED backend=%s user=%s bytes=%d",
            record.job_id,
            record.backend,
            record.owner_label,
            len(program),
        )
        return record.job_id

    async def _store_new(self, record: JobRecord, program: bytes) -> None:
        """The program, then the record; one write where the payloads live beside the
        records (standalone: docs/design.md, "Standalone storage")."""
        if self._core.beside_records is not None:
            await self._core.beside_records.create_with_input(record, program)
            return
        await self._core.payloads.put_input(record.job_id, program, object_tags(record))
        await self._core.store.create(record, self._core.fence)

    async def _stored_key_holder(self, record: JobRecord) -> JobRecord:
        try:
            holder = await self._core.store.find_by_idempotency_key(
                record.owner_fingerprint, record.idempotency_key)
        except StoreError as exc:
            log.error("idempotency key could not be looked up: %s", exc)
            raise SchedulerError("submission_not_stored") from None
        if holder is None:  # the holder expired in between: rare, and a retry succeeds
            raise SchedulerError("submission_not_stored")
        return holder

    async def _was_stored(self, job_id: str) -> bool:
        """After a failed write: is the record there after all? Cleans up when it is not.

        When even that cannot be known, the input is kept: if the record exists, the
        next restart queues the job; if not, the input is an orphan and harms nothing.
        """
        try:
            # The scheduler's own check, not the caller asking for an id: charged to no
            # token's budget of unknown job ids (scheduler/access/absent_jobs.py).
            with on_own_behalf():
                stored = await self._core.store.get(job_id)
        except StoreError:
            return False
        if stored is None:
            await self._core.forget_input(job_id)
        return stored is not None

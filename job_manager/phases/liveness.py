"""Liveness: the nodes that ask for work, their heartbeats, the deadlines of RUNNING jobs,
and what becomes of a job whose node is lost.

A RUNNING job whose node never reports by its deadline, or whose heartbeats stop, is
lost: it is requeued while SCHEDULER_MAX_REQUEUES allows, else it times out
(docs/job-rules.md, rule 5; docs/nodes.md). The deadlines are kept by the ledger; this
phase decides what a passed one means.

Among replicas the leader also sweeps for what a deposed leader wrote late: a hand-over
or a report it sent just before its lease lapsed, which goes out without the fence item
and so can land after this term read the store (docs/replicas.md, "Fence").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import timedelta

from backend_manager import NodeLiveness, ServiceStatus
from common.identity import Principal
from job_manager.ledger import Beat
from job_manager.model import JobRecord, JobStatus
from job_manager.phases.core import JobCore
from job_manager.queue import QueuedJob
from job_manager.stores import StoreError
from job_manager.watchdog import RETRY_S
from message_manager import SchedulerError

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 5.0  # how often a leader among replicas looks for a deposed leader's writes


class Liveness:
    """Watches nodes and RUNNING jobs; requeues or times out what a lost node held."""

    def __init__(self, core: JobCore, *, report_grace: timedelta, heartbeat_timeout_s: float,
                 node_quiet_s: float) -> None:
        self._core = core
        self._ledger = core.ledger
        self._report_grace = report_grace
        self._heartbeat_timeout_s = heartbeat_timeout_s
        # Who asks for work (docs/nodes.md): a backend no node asked lately is noted.
        self._nodes = NodeLiveness(core.clock, node_quiet_s,
                                   lambda name: core.backends.is_known(name))
        self._next_sweep = 0.0  # monotonic time of the next sweep for late writes
        self._running_at_last_sweep: frozenset[str] = frozenset()

    # --- nodes ---------------------------------------------------------------------------
    def polled(self, backend: str) -> None:
        """A node asked ``backend`` for work."""
        self._nodes.polled(backend)

    def waiting(self, backend: str) -> AbstractContextManager[None]:
        """A context in which a node waits for ``backend``'s work."""
        return self._nodes.waiting(backend)

    def service_status(self, backend: str, principal: Principal) -> tuple[ServiceStatus, str]:
        """The backend's status and description for the caller's role; the leader adds
        that no node has asked for work lately (docs/nodes.md), the status stays."""
        self._core.check_known(backend)
        status = self._core.backend_status(backend, principal)
        quiet = self._nodes.note(backend) if self._core.leads else ""
        return status.status, "; ".join(text for text in (status.description, quiet) if text)

    def node_snapshot(self) -> list[tuple[str, float]]:
        """(backend, seconds since a node asked it for work), for metrics; the leader's only."""
        return self._nodes.snapshot(self._core.backends.known()) if self._core.leads else []

    def _check_nodes(self) -> None:
        if self._core.leads:
            self._nodes.check(self._core.backends.known())

    async def _follow_turns(self) -> None:
        """A follower reads the bookings and sessions the leader wrote, each round, so that
        what it answers itself (a backend's status, a job's wait) agrees with the leader."""
        turns = self._core.turns
        try:
            await turns.calendar.load()
            await turns.sessions.load()
        except StoreError as exc:
            log.warning("bookings and sessions not read from the store now: %s", exc)

    # --- heartbeats ------------------------------------------------------------------------
    async def heartbeat(self, job_id: str, node: str = "", handover: int | None = None) -> float:
        """A node still runs the job: from its first beat on, the job is lost once its
        beats stop for the heartbeat timeout (docs/nodes.md). Returns that timeout."""
        record = await self._core.find_for_node(job_id)
        check_node(record, node)
        if record.status is not JobStatus.RUNNING:
            raise SchedulerError("heartbeat_job_not_running", job_id=job_id,
                                 status=record.status.value)
        check_hand_over(record, handover)
        if self._ledger.live(job_id) is record:
            if self._ledger.beat(job_id, record.dequeued_at, self._heartbeat_timeout_s):
                log.info("job %s: its node sends heartbeats (lost after %g s without one)",
                         job_id, self._heartbeat_timeout_s)
        return self._heartbeat_timeout_s

    # --- deadlines ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Watch the deadlines for ever (the scheduler's supervisor runs this, and restarts
        it), and see who still asks for work."""
        while True:
            await self.check_deadlines()
            self._check_nodes()
            await self._check_turns()
            if self._core.clock.monotonic() >= self._next_sweep:
                self._next_sweep = self._core.clock.monotonic() + SWEEP_EVERY_S
                await self.sweep_late_writes()
            await self._ledger.until_next_deadline()

    async def _check_turns(self) -> None:
        """End the sessions idle too long or at their length, and, while anything may hold
        jobs back (a booking, a session, a budget), let waiting nodes look again: a window
        may have opened, a session ended, a budget's period turned. So who may go changes
        within a round of this watch (at most MAX_SLEEP_S, job_manager/watchdog.py)."""
        turns = self._core.turns
        if not self._core.leads:
            await self._follow_turns()
            return
        if not turns.active():
            return
        try:
            for ended in await turns.sessions.watch(self._ledger.live_jobs_of):
                log.info("session %s on %s ended: %s", ended.session_id, ended.backend,
                         ended.end_reason)
        except (SchedulerError, StoreError) as exc:
            log.warning("sessions could not be ended now, tried again soon: %s", exc)
        self._ledger.wake_all()

    async def sweep_late_writes(self) -> int:
        """Find a deposed leader's late hand-overs and reports; returns how many jobs memory
        had wrong, now believed from the store.

        Such a write lands only on a job this term has not written yet (its condition names
        the term), so it leaves a job RUNNING that memory holds QUEUED, or ends one memory
        holds RUNNING since the term began. The status index shows both: a job it lists as
        RUNNING that is queued here, and one RUNNING here since the last sweep that it no
        longer lists. Each is read (strongly consistent) before memory follows the store,
        as the index lags a little behind the table. Only a leader among replicas sweeps.
        """
        core = self._core
        if core.fence is None or not core.leads:
            return 0
        running_before = self._running_at_last_sweep
        self._running_at_last_sweep = self._ledger.running_ids()
        try:
            listed = {record.job_id: record
                      async for record in core.store.list_by_status(JobStatus.RUNNING)}
        except StoreError as exc:
            log.warning("no sweep for a deposed leader's writes now: %s", exc)
            return 0
        suspects = [job_id for job_id, stored in listed.items()
                    if (held := self._ledger.live(job_id)) is not None
                    and held.status is JobStatus.QUEUED and stored.requeues >= held.requeues]
        suspects += [job_id for job_id in running_before & self._ledger.running_ids()
                     if job_id not in listed]
        wrong = 0
        for job_id in suspects:
            held = self._ledger.live(job_id)
            if held is None or core.changing(job_id):
                continue  # ended or changing here: this term writes it
            try:
                stored = await core.read(job_id)
            except SchedulerError:
                continue  # the next sweep reads it again
            if self._ledger.live(job_id) != held or core.changing(job_id) or (
                    stored is not None and (stored.status, stored.requeues)
                    == (held.status, held.requeues)):
                continue  # changed here meanwhile, or memory was right
            log.warning("job %s was written by a deposed leader after this term began",
                        job_id)
            wrong += 1
            with contextlib.suppress(SchedulerError):
                await core.believe_store(job_id)  # read again later if this read fails
        return wrong

    async def check_deadlines(self) -> int:
        """Deal with every deadline that has passed; returns how many were due."""
        due = self._ledger.due()
        for passed in due:
            try:
                await self._deadline_passed(passed.job_id, passed.watched)
            except Exception:
                log.exception("job %s could not be timed out; retrying in %.0f s",
                              passed.job_id, RETRY_S)
                self._ledger.retry(passed)
        return len(due)

    async def _deadline_passed(self, job_id: str, watched: object) -> None:
        """A RUNNING job whose node never reported, or whose node's heartbeats stopped
        (``watched`` is then a Beat), is lost. Otherwise ``watched`` is the
        ``dequeued_at`` of the hand-over the deadline was watched for.
        """
        await self._core.settled(job_id)  # a report under way: its outcome decides
        if isinstance(watched, Beat):
            await self._beats_stopped(job_id, watched)
            return
        record = self._ledger.live(job_id)
        if record is None or record.status is not JobStatus.RUNNING:
            return  # reported in time
        if record.dequeued_at != watched:
            return  # given back and handed over again since: its new deadline is watched
        grace_s = self._report_grace.total_seconds()
        await self._lost(record, "its node never reported",
                         f"the backend never reported: no report within the job's timeout "
                         f"({record.timeout_s:g} s) and {grace_s:g} s of grace")

    async def _beats_stopped(self, job_id: str, beat: Beat) -> None:
        if not self._ledger.latest_beat(job_id, beat):
            return  # beaten again since: the later beat's deadline is watched
        record = self._ledger.live(job_id)
        if (record is not None and record.status is JobStatus.RUNNING
                and record.dequeued_at == beat.dequeued_at):
            silence = f"{self._heartbeat_timeout_s:g} s without one"
            await self._lost(record, f"its node stopped sending heartbeats ({silence})",
                             f"the backend stopped sending heartbeats ({silence}, "
                             f"SCHEDULER_HEARTBEAT_TIMEOUT_S)")
        self._ledger.beat_over(job_id, beat)  # kept when _lost failed: the watchdog retries

    async def _lost(self, record: JobRecord, why: str, detail: str) -> None:
        """A RUNNING job whose node is gone: requeued while SCHEDULER_MAX_REQUEUES
        allows, else TIMEOUT with ``detail``."""
        core = self._core
        if record.requeues < core.max_requeues:
            await asyncio.shield(core.change(record.job_id, self.requeue(record, why)))
            return
        timed_out = replace(record, status=JobStatus.TIMEOUT, finished_at=core.clock.now(),
                            status_detail=detail)
        try:
            await asyncio.shield(core.change(record.job_id, core.finish(record, timed_out)))
        except SchedulerError as exc:
            if exc.key != "report_conflict":
                raise
            # A report won the race: the job ended as the node said.

    async def requeue(self, running: JobRecord, why: str) -> JobRecord | None:
        """A RUNNING job its node lost (it never reported, or failed it for a reason of its
        own) goes back to the head of its queue; the queued record, or None if it did not."""
        core = self._core
        queued = replace(running, status=JobStatus.QUEUED, dequeued_at=None, node_identity="",
                         actual_backend="", requeues=running.requeues + 1,
                         status_detail=f"queued again: {why} "
                                       f"({running.requeues + 1} of {core.max_requeues})")
        try:
            changed = await core.transition(running, queued)
        except StoreError as exc:
            # Still RUNNING in the store; watched again, it ends TIMEOUT or is tried again.
            log.error("job %s whose node vanished could not be requeued: %s",
                      running.job_id, exc)
            self._ledger.watch_again(running)
            return None
        if not changed:
            await core.believe_store(running.job_id)
            return None
        self._ledger.requeued(QueuedJob.at_head(queued))
        core.observer.requeued(queued)
        log.warning("job %s requeued (%d of %d): %s", running.job_id,
                    queued.requeues, core.max_requeues, why)
        return queued


def check_node(record: JobRecord, node: str) -> None:
    """A job taken by a named node may be reported, renewed or beaten for by that node
    only: a caller that names none is refused too, or leaving the name out would pass
    the check (docs/nodes.md)."""
    if record.node_identity and node != record.node_identity:
        raise SchedulerError("job_held_by_another_node", job_id=record.job_id)


def check_hand_over(record: JobRecord, handover: int | None) -> None:
    """A call that names the hand-over it holds (x-mqc3-handover) is refused unless that is
    the job's current one: a stale node must stop (docs/job-rules.md, rule 19)."""
    if handover is not None and handover != record.requeues:
        raise SchedulerError("earlier_hand_over", job_id=record.job_id, sent=handover,
                             current=record.requeues)

"""JobsService: the extension (mqc3_scheduler.extension.v1) beside SubmissionService.

The same tokens and ownership as GetJobStatus: a token sees its own jobs, an admin's sees
everyone's and is told whose they are. Listings and totals are read from the JobStore
(job_manager/listing.py), so any replica answers them; SetJobTags changes a job and
GetUsage reads the live quota counters, so both run where the leader is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.message import DecodeError

from common import audit, timestamps
from common.clock import Clock
from common.identity import Principal, Role
from job_manager import listing
from job_manager.budgets import BudgetLeft
from job_manager.manager import JobManager
from job_manager.model import JobRecord
from job_manager.tags import checked_tags, parse_tag_filter
from message_manager import SchedulerError
from pb.mqc3_cloud.scheduler.v1 import job_pb2
from pb.mqc3_scheduler.extension.v1 import jobs_pb2 as pb
from pb.mqc3_scheduler.extension.v1 import jobs_pb2_grpc
from scheduler.access.auth import TokenResolver
from scheduler.messages import convert
from scheduler.services.edge import Edge, in_band
from scheduler.services.watches import Watches

JOBS = pb.DESCRIPTOR.services_by_name["JobsService"].full_name
ALL_OWNERS = "*"  # ListJobs' owner_name for every owner's jobs (admins)
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # before any job: a listing's default start
CLOCK_SKEW = timedelta(days=1)  # another replica's clock may run ahead of this one's
USAGE_PERIOD = timedelta(days=30)  # GetUsage's period when the request names none
_STATUS_OF = {value: status for status, value in convert.JOB_STATUS.items()}


class JobsService(jobs_pb2_grpc.JobsServiceServicer):
    """List, tag, count and watch one's jobs."""

    def __init__(self, auth: TokenResolver, edge: Edge, clock: Clock, watches: Watches) -> None:
        self._auth = auth
        self.edge = edge
        self._clock = clock
        self._watches = watches

    @in_band(pb.ListJobsResponse)
    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> pb.ListJobsResponse:
        principal = await self._auth.resolve(request.token)
        query = self._query(request, principal)
        page, cursor = await listing.list_page(manager.jobs, query)
        if query.owner_fingerprint is None:
            audit.record(audit.Actor.of(principal), "jobs.list", owner_name=request.owner_name,
                         jobs=len(page))
        admin = principal.role is Role.ADMIN
        return pb.ListJobsResponse(
            jobs=[summary(record, manager, admin) for record in page],
            next_page_token=cursor.token() if cursor is not None else "")

    def _query(self, request: pb.ListJobsRequest, principal: Principal) -> listing.ListQuery:
        since, until = self._period(request, "submitted_from", "submitted_to", None)
        statuses = set()
        for value in request.statuses:
            if value not in _STATUS_OF:
                raise SchedulerError("status_filter_unknown", value=value, allowed=", ".join(
                    job_pb2.JobStatus.Name(known) for known in _STATUS_OF))
            statuses.add(_STATUS_OF[value])
        return listing.ListQuery(
            owner_fingerprint=_owner_scope(principal, request.owner_name),
            since=since, until=until, statuses=frozenset(statuses), backend=request.backend,
            tag=parse_tag_filter(request.tag) if request.tag else None,
            owner_name="" if request.owner_name == ALL_OWNERS else request.owner_name,
            page_size=listing.checked_page_size(request.page_size),
            after=listing.Cursor.from_token(request.page_token) if request.page_token else None)

    def _period(self, request: pb.ListJobsRequest | pb.GetUsageRequest, start: str, end: str,
                default_length: timedelta | None) -> tuple[datetime, datetime]:
        now = self._clock.now()
        until = _bound(request, end) if request.HasField(end) else now
        if request.HasField(start):
            since = _bound(request, start)
        elif default_length is not None:
            since = until - min(default_length, until - timestamps.EARLIEST)
        else:
            since = min(EARLIEST, until)
        if since > until:
            raise SchedulerError("time_range_invalid", why=f"{start} is after {end}")
        # No job was submitted before EARLIEST or after now: a period reaching beyond them
        # holds no more jobs, and DynamoDB walks it month by month (job_manager/listing.py).
        return max(since, min(EARLIEST, until)), min(until, max(now + CLOCK_SKEW, since))

    @in_band(pb.SetJobTagsResponse, leader=True)
    async def SetJobTags(
        self, request: pb.SetJobTagsRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> pb.SetJobTagsResponse:
        principal = await self._auth.resolve(request.token)
        tags = checked_tags([(tag.key, tag.value) for tag in request.tags])
        record = await manager.set_tags(principal, request.job_id, tags)  # audits an admin's
        return pb.SetJobTagsResponse(tags=_tags(record))

    @in_band(pb.GetUsageResponse, leader=True)
    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> pb.GetUsageResponse:
        principal = await self._auth.resolve(request.token)
        since, until = self._period(request, "from", "to", USAGE_PERIOD)
        if request.all_users:
            owner = _owner_scope(principal, ALL_OWNERS)
        else:
            owner = _owner_scope(principal, request.owner_name)
        totals = await listing.usage(manager.jobs, owner, since, until, n_shots)
        if owner is None:
            audit.record(audit.Actor.of(principal), "jobs.usage",
                         owner_name=ALL_OWNERS if request.all_users else request.owner_name)
        if request.owner_name:
            totals = {fp: t for fp, t in totals.items() if t.owner_name == request.owner_name}
        elif not request.all_users and principal.fingerprint not in totals:
            totals[principal.fingerprint] = listing.Totals(
                principal.name, principal.fingerprint, principal.role.value)
        response = pb.GetUsageResponse(usage=[
            await _usage(t, manager) for t in sorted(totals.values(), key=lambda t: t.owner_name)])
        response.to.CopyFrom(convert.timestamp(until))
        getattr(response, "from").CopyFrom(convert.timestamp(since))
        return response

    async def WatchJob(self, request: pb.WatchJobRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchJobResponse]:
        """Each status of the job until a final one (scheduler/services/watches.py)."""
        async for message in self._watches.watch(self.edge, self._auth, request, context):
            yield message


def _bound(request: pb.ListJobsRequest | pb.GetUsageRequest, field: str) -> datetime:
    """A period's bound as sent; one beyond what a date can hold is no bound on its side
    (docs/protocol.md), a malformed one is refused naming it."""
    try:
        return timestamps.clamped(getattr(request, field))
    except timestamps.TimestampMalformed:
        raise SchedulerError("timestamp_invalid", field=field) from None


def _owner_scope(principal: Principal, owner_name: str) -> str | None:
    """Whose jobs the store lists: the caller's own, or for an admin naming an owner (or
    ALL_OWNERS) everyone's, narrowed by name afterwards."""
    if not owner_name:
        return principal.fingerprint
    if principal.role is not Role.ADMIN:
        raise SchedulerError("owner_filter_not_allowed")
    return None


def n_shots(record: JobRecord) -> int:
    """The job's shots from its stored settings; 0 when they cannot be read."""
    settings = job_pb2.JobExecutionSettings()
    try:
        settings.ParseFromString(record.settings)
    except DecodeError:
        return 0
    return max(0, settings.n_shots)


def _tags(record: JobRecord) -> list[pb.Tag]:
    return [pb.Tag(key=key, value=value) for key, value in record.tags]


def summary(record: JobRecord, manager: JobManager, admin: bool) -> pb.JobSummary:
    """One job as a listing shows it."""
    entry = pb.JobSummary(
        job_id=record.job_id, status=convert.JOB_STATUS[record.status], backend=record.backend,
        n_shots=n_shots(record), tags=_tags(record), owner_name=record.owner_name if admin else "",
        status_detail=manager.status_detail(record),
        node_identity=record.node_identity if admin else "")
    entry.submitted_at.CopyFrom(convert.timestamp(record.submitted_at))
    entry.queued_at.CopyFrom(convert.timestamp(record.queued_at))
    if record.dequeued_at is not None:
        entry.dequeued_at.CopyFrom(convert.timestamp(record.dequeued_at))
    if record.finished_at is not None:
        entry.finished_at.CopyFrom(convert.timestamp(record.finished_at))
    return entry


async def _usage(totals: listing.Totals, manager: JobManager) -> pb.Usage:
    role = Role(totals.role)
    usage = manager.usage(totals.owner_fingerprint, role)
    left = await manager.budget_left(
        Principal(totals.owner_name, role, totals.owner_fingerprint))
    return pb.Usage(
        owner_name=totals.owner_name,
        jobs_by_final_status=[
            pb.StatusCount(status=convert.JOB_STATUS[status], jobs=count)
            for status, count in sorted(totals.by_final_status.items())],
        total_shots=totals.shots,
        queue_wait_seconds=totals.queue_wait_s,
        execution_seconds=totals.execution_s,
        live_jobs=usage.live_jobs,
        max_live_jobs=usage.max_live_jobs,
        queued_bytes=usage.queued_bytes,
        max_queued_bytes=usage.max_queued_bytes,
        role=totals.role,
        budget=_budget(left) if left is not None else None)


def _budget(left: BudgetLeft) -> pb.Budget:
    """A budget and its use this period, as GetUsage shows it (docs/reservations.md)."""
    return pb.Budget(period=left.budget.period.value, qpu_seconds=left.budget.qpu_seconds,
                     shots=left.budget.shots, qpu_seconds_used=left.spent_qpu_s,
                     shots_used=left.spent_shots, resets_at=convert.timestamp(left.resets_at))


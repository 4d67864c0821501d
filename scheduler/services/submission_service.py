"""SubmissionService: what SDK users call. Thin: proto in, JobManager call, proto out."""

from __future__ import annotations

import grpc

from common.identity import fingerprint
from job_manager.manager import JobManager
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from pb.mqc3_cloud.scheduler.v1 import submission_pb2_grpc
from scheduler.access.auth import TokenResolver
from scheduler.messages import convert
from scheduler.messages.validation import (
    idempotency_key,
    job_spec,
    named_session,
    submitted_tags,
)
from scheduler.services.edge import Edge, in_band

GET_JOB_STATUS = f"/{pb.DESCRIPTOR.services_by_name['SubmissionService'].full_name}/GetJobStatus"
_SERVICE_STATUS = {
    "available": pb.SERVICE_STATUS_AVAILABLE,
    "unavailable": pb.SERVICE_STATUS_UNAVAILABLE,
    "maintenance": pb.SERVICE_STATUS_MAINTENANCE,
}


class SubmissionService(submission_pb2_grpc.SubmissionServiceServicer):
    """Submit, watch, fetch and cancel jobs; ask whether a backend takes jobs."""

    def __init__(self, auth: TokenResolver, edge: Edge) -> None:
        self._auth = auth
        self.edge = edge

    @in_band(pb.SubmitJobResponse, leader=True)
    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> pb.SubmitJobResponse:
        principal = await self._auth.resolve(request.token)
        spec = job_spec(request, principal, idempotency_key(context), submitted_tags(context),
                        named_session(context))
        job_id = await manager.submit(principal, spec)
        return pb.SubmitJobResponse(job_id=job_id)

    @in_band(pb.GetJobStatusResponse)
    async def GetJobStatus(
        self, request: pb.GetJobStatusRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> pb.GetJobStatusResponse:
        if self.edge.replicas.following and not manager.knows_final(
                request.job_id, fingerprint(request.token)):
            # A live job's status is the leader's to tell, from memory: a follower passes
            # the poll on rather than read the store (docs/replicas.md). So is a final one
            # of another token's, as an unknown id is (issue 27, item 9).
            answered = await self.edge.replicas.read_at_leader(
                GET_JOB_STATUS, request, pb.GetJobStatusResponse, context)
            if answered is not None:
                return answered  # type: ignore[no-any-return]
        principal = await self._auth.resolve(request.token)
        record = await manager.status(principal, request.job_id)
        return pb.GetJobStatusResponse(
            status=convert.JOB_STATUS[record.status],
            status_detail=manager.status_detail(record),
            execution_details=convert.execution_details(record),
        )

    @in_band(pb.GetJobResultResponse)
    async def GetJobResult(
        self, request: pb.GetJobResultRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> pb.GetJobResultResponse:
        principal = await self._auth.resolve(request.token)
        record, url = await manager.result(principal, request.job_id)
        response = pb.GetJobResultResponse(
            status=convert.JOB_STATUS[record.status],
            status_detail=record.status_detail,
            execution_details=convert.execution_details(record),
        )
        if url is not None:
            response.result.CopyFrom(convert.job_result(url))
        return response

    @in_band(pb.CancelJobResponse, leader=True)
    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> pb.CancelJobResponse:
        principal = await self._auth.resolve(request.token)
        await manager.cancel(principal, request.job_id)
        return pb.CancelJobResponse()

    @in_band(pb.GetServiceStatusResponse)
    async def GetServiceStatus(
        self, request: pb.GetServiceStatusRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> pb.GetServiceStatusResponse:
        principal = await self._auth.resolve(request.token)
        status, description = manager.service_status(request.backend, principal)
        return pb.GetServiceStatusResponse(
            status=_SERVICE_STATUS[status.value], description=description
        )

"""ExecutionService: what hardware nodes call. Thin: proto in, JobManager call, proto out."""

from __future__ import annotations

from datetime import UTC

import grpc

from job_manager.manager import ExecutionReport, JobManager
from job_manager.model import BackendTimestamps, JobStatus
from message_manager import SchedulerError
from pb.mqc3_cloud.scheduler.v1 import execution_pb2 as pb
from pb.mqc3_cloud.scheduler.v1 import execution_pb2_grpc, job_pb2
from scheduler import convert
from scheduler.edge import in_band

_OUTCOME = {
    pb.EXECUTION_STATUS_SUCCESS: JobStatus.COMPLETED,
    pb.EXECUTION_STATUS_FAILURE: JobStatus.FAILED,
    pb.EXECUTION_STATUS_TIMEOUT: JobStatus.TIMEOUT,
}


def _backend_timestamps(stamps: job_pb2.JobTimestamps) -> BackendTimestamps:
    def read(name: str):  # type: ignore[no-untyped-def]
        if not stamps.HasField(name):
            return None
        return getattr(stamps, name).ToDatetime(tzinfo=UTC)

    return BackendTimestamps(
        compile_started_at=read("compile_started_at"),
        compile_finished_at=read("compile_finished_at"),
        execution_started_at=read("execution_started_at"),
        execution_finished_at=read("execution_finished_at"),
    )


def _report(request: pb.ReportExecutionResultRequest) -> ExecutionReport:
    outcome = _OUTCOME.get(request.status)
    if outcome is None:
        raise SchedulerError(
            "execution_status_invalid",
            allowed=", ".join(pb.ExecutionStatus.Name(s) for s in _OUTCOME),
            value=request.status,
        )
    detail = request.error.description
    if request.error.code and detail:
        detail = f"{request.error.code}: {detail}"
    return ExecutionReport(
        job_id=request.job_id,
        outcome=outcome,
        detail=detail or request.error.code,
        timestamps=_backend_timestamps(request.timestamps),
        actual_backend=request.actual_backend,
        physical_lab_version=request.version.physical_lab,
        simulator_version=request.version.simulator,
        raw_size_bytes=request.uploaded_result.raw_size_bytes,
        encoded_size_bytes=request.uploaded_result.encoded_size_bytes,
    )


class ExecutionService(execution_pb2_grpc.ExecutionServiceServicer):
    """Take the next job, report how it went, renew an upload URL."""

    def __init__(self, jobs: JobManager) -> None:
        self._jobs = jobs

    @in_band(pb.AssignNextJobResponse)
    async def AssignNextJob(
        self, request: pb.AssignNextJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.AssignNextJobResponse:
        assignment = await self._jobs.assign(request.backend)
        if assignment is None:
            return pb.AssignNextJobResponse()
        response = pb.AssignNextJobResponse(
            job_id=assignment.record.job_id,
            upload_target=convert.upload_target(assignment.upload),
        )
        response.job.program.ParseFromString(assignment.program)
        response.job.settings.ParseFromString(assignment.record.settings)
        return response

    @in_band(pb.ReportExecutionResultResponse)
    async def ReportExecutionResult(
        self, request: pb.ReportExecutionResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportExecutionResultResponse:
        await self._jobs.report(_report(request))
        return pb.ReportExecutionResultResponse()

    @in_band(pb.RefreshUploadUrlResponse)
    async def RefreshUploadUrl(
        self, request: pb.RefreshUploadUrlRequest, context: grpc.aio.ServicerContext
    ) -> pb.RefreshUploadUrlResponse:
        url = await self._jobs.refresh_upload_url(request.job_id)
        return pb.RefreshUploadUrlResponse(upload_target=convert.upload_target(url))

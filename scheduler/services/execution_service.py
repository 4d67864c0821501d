"""What hardware nodes call on the execution port: the protocol's ExecutionService and the
extension's NodeService (docs/nodes.md). Thin: proto in, JobManager call, proto out."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime, timedelta

import grpc

from common import timestamps
from job_manager.manager import ExecutionReport, JobManager
from job_manager.model import BackendTimestamps, JobStatus
from message_manager import SchedulerError
from pb.mqc3_cloud.scheduler.v1 import execution_pb2 as pb
from pb.mqc3_cloud.scheduler.v1 import execution_pb2_grpc, job_pb2
from pb.mqc3_scheduler.extension.v1 import nodes_pb2, nodes_pb2_grpc
from scheduler.messages import convert
from scheduler.messages.metadata import metadata_value
from scheduler.services.edge import Edge, in_band

_OUTCOME = {
    pb.EXECUTION_STATUS_SUCCESS: JobStatus.COMPLETED,
    pb.EXECUTION_STATUS_FAILURE: JobStatus.FAILED,
    pb.EXECUTION_STATUS_TIMEOUT: JobStatus.TIMEOUT,
}


def _backend_timestamps(stamps: job_pb2.JobTimestamps) -> BackendTimestamps:
    # A time beyond what a date can hold is kept as the first or last one; the manager
    # clamps it into the job's run as any other time a node's clock got wrong
    # (docs/differences.md). Only a malformed one is refused.
    def read(name: str) -> datetime | None:
        if not stamps.HasField(name):
            return None
        try:
            return timestamps.clamped(getattr(stamps, name))
        except timestamps.TimestampMalformed:
            raise SchedulerError("timestamp_invalid", field=f"timestamps.{name}") from None

    return BackendTimestamps(
        compile_started_at=read("compile_started_at"),
        compile_finished_at=read("compile_finished_at"),
        execution_started_at=read("execution_started_at"),
        execution_finished_at=read("execution_finished_at"),
    )


# A report is stored with its job and answered to its owner in every status and result
# call: what it carries must fit a DynamoDB item (400 KB) and a response of the submission
# port, whatever the node sent (docs/differences.md).
MAX_DETAIL_CHARS = 16 * 1024
MAX_REPORT_NAME_CHARS = 256


def _bounded(detail: str) -> str:
    """The node's description, cut to MAX_DETAIL_CHARS with a note saying so."""
    if len(detail) <= MAX_DETAIL_CHARS:
        return detail
    return f"{detail[:MAX_DETAIL_CHARS]}… [{len(detail) - MAX_DETAIL_CHARS} more characters]"


INFRASTRUCTURE_FAILURE = "UNAVAILABLE"


def _report(request: pb.ReportExecutionResultRequest) -> ExecutionReport:
    outcome = _OUTCOME.get(request.status)
    if outcome is None:
        raise SchedulerError(
            "execution_status_invalid",
            allowed=", ".join(pb.ExecutionStatus.Name(s) for s in _OUTCOME),
            value=request.status,
        )
    for name, value in (("actual_backend", request.actual_backend),
                        ("version.physical_lab", request.version.physical_lab),
                        ("version.simulator", request.version.simulator)):
        if len(value) > MAX_REPORT_NAME_CHARS:
            raise SchedulerError("report_field_too_long", field=name,
                                 maximum=MAX_REPORT_NAME_CHARS, length=len(value))
    # The node's description reaches the user as the node wrote it, as the original
    # passes it (the SDK shows it); its code stands in only when it wrote none.
    return ExecutionReport(
        job_id=request.job_id,
        outcome=outcome,
        detail=_bounded(request.error.description or request.error.code),
        timestamps=_backend_timestamps(request.timestamps),
        actual_backend=request.actual_backend,
        physical_lab_version=request.version.physical_lab,
        simulator_version=request.version.simulator,
        raw_size_bytes=request.uploaded_result.raw_size_bytes,
        encoded_size_bytes=request.uploaded_result.encoded_size_bytes,
        # A failure the node marks UNAVAILABLE (the gRPC code name, as error codes are
        # throughout the protocol) is its backend's, not the program's (docs/protocol.md).
        infrastructure=(outcome is JobStatus.FAILED
                        and request.error.code == INFRASTRUCTURE_FAILURE),
    )


WAIT_METADATA = "x-mqc3-wait-ms"
# A long poll answers this long before the caller's own deadline, so the node gets an
# empty answer rather than DEADLINE_EXCEEDED.
DEADLINE_MARGIN_S = 0.05


def _wait_s(context: grpc.aio.ServicerContext, max_wait_s: float) -> float:
    """How long the node asked to wait for a job (x-mqc3-wait-ms), capped; 0 if it did not."""
    text = metadata_value(context, WAIT_METADATA)
    if text is None:
        return 0.0
    digits = text.strip()
    if not (digits.isascii() and digits.isdecimal()):
        raise SchedulerError("wait_ms_invalid", header=WAIT_METADATA, value=repr(text[:32]),
                             maximum=round(max_wait_s * 1000))
    wait_s = min(int(digits[:12]) / 1000, max_wait_s)  # 12 digits: well past any cap
    remaining = context.time_remaining()
    if remaining is not None:
        wait_s = min(wait_s, max(0.0, remaining - DEADLINE_MARGIN_S))
    return wait_s


NODE_ID_METADATA = "x-mqc3-node-id"
MAX_NODE_ID_CHARS = 128
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")


def node_identity(context: grpc.aio.ServicerContext, certified: bool) -> str:
    """The calling node's name: its certificate's under mTLS (``certified``: the port
    requires client certificates), else the x-mqc3-node-id it sent (checked), else ""
    (docs/nodes.md). Without mTLS the auth context is not asked for: it costs more than
    the rest of a report's handling."""
    names = ((context.auth_context() or {}).get("x509_common_name") or []) if certified else []
    declared = metadata_value(context, NODE_ID_METADATA) or ""
    if declared and not (len(declared) <= MAX_NODE_ID_CHARS and _NODE_ID.fullmatch(declared)):
        raise SchedulerError("node_id_invalid", header=NODE_ID_METADATA,
                             maximum=MAX_NODE_ID_CHARS, value=repr(declared[:64]))
    return names[0].decode(errors="replace") if names else declared


HANDOVER_METADATA = "x-mqc3-handover"
MAX_HANDOVER = 999_999_999  # nine digits: far past any SCHEDULER_MAX_REQUEUES


def handover_sent(context: grpc.aio.ServicerContext) -> int | None:
    """The hand-over a node says it holds (x-mqc3-handover, the number its assignment
    named), or None when it sent none (docs/nodes.md)."""
    text = metadata_value(context, HANDOVER_METADATA)
    if text is None:
        return None
    if not (text.isascii() and text.isdecimal() and len(text) <= len(str(MAX_HANDOVER))):
        raise SchedulerError("handover_invalid", header=HANDOVER_METADATA,
                             maximum=MAX_HANDOVER, value=repr(text[:32]))
    return int(text)


class ExecutionService(execution_pb2_grpc.ExecutionServiceServicer):
    """Take the next job, report how it went, renew an upload URL."""

    def __init__(self, max_assign_wait_s: float, edge: Edge, certified_nodes: bool) -> None:
        self._max_assign_wait_s = max_assign_wait_s
        self.edge = edge
        self._certified = certified_nodes  # the port requires client certificates

    @in_band(pb.AssignNextJobResponse, leader=True)
    async def AssignNextJob(
        self, request: pb.AssignNextJobRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> pb.AssignNextJobResponse:
        wait_s = _wait_s(context, self._max_assign_wait_s)
        node = node_identity(context, self._certified)
        forwarded = self.edge.replicas.undelivered.forwarded_call(context)
        assignment = await manager.assign(request.backend, node=node)
        if assignment is None and wait_s > 0:
            with self.edge.admission.released():  # a parked node holds no call slot
                assignment = await manager.assign(request.backend, wait_s, node)
        if assignment is None:
            return pb.AssignNextJobResponse()
        # Should the call end without the node receiving the job (its deadline passed
        # as the answer was sent), the job goes back to its queue.
        context.add_done_callback(
            lambda done: manager.give_back(assignment) if done.cancelled() else None)
        # Passed on by a follower, which may learn that its node left
        # (scheduler/replication/undelivered.py).
        self.edge.replicas.undelivered.handed_over(forwarded, manager, assignment)
        # Which hand-over this is, for the node to name in its later calls (docs/nodes.md):
        # metadata, as the protocol's Job has no field for it.
        try:
            await context.send_initial_metadata(
                ((HANDOVER_METADATA, str(assignment.record.requeues)),))
        except BaseException:
            # The node left while the metadata went out (a cancellation, or gRPC refusing the
            # send of a call that already ended), and gRPC does not always end such a call
            # as cancelled: the job comes back here (docs/job-rules.md, rule 12). A second
            # give-back from the callback above finds it queued and does nothing.
            manager.give_back(assignment)
            raise
        response = pb.AssignNextJobResponse(
            job_id=assignment.record.job_id,
            upload_target=convert.upload_target(assignment.upload),
        )
        response.job.program.ParseFromString(assignment.program)
        response.job.settings.ParseFromString(assignment.record.settings)
        return response

    @in_band(pb.ReportExecutionResultResponse, limited=False, leader=True)
    async def ReportExecutionResult(
        self, request: pb.ReportExecutionResultRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> pb.ReportExecutionResultResponse:
        node = node_identity(context, self._certified)
        await manager.report(replace(_report(request), handover=handover_sent(context)), node)
        return pb.ReportExecutionResultResponse()

    @in_band(pb.RefreshUploadUrlResponse, limited=False, leader=True)
    async def RefreshUploadUrl(
        self, request: pb.RefreshUploadUrlRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> pb.RefreshUploadUrlResponse:
        node = node_identity(context, self._certified)
        url = await manager.refresh_upload_url(request.job_id, node, handover_sent(context))
        return pb.RefreshUploadUrlResponse(upload_target=convert.upload_target(url))


NODES = nodes_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name


class NodeService(nodes_pb2_grpc.NodeServiceServicer):
    """The extension's calls for nodes: heartbeats of running jobs."""

    def __init__(self, edge: Edge, certified_nodes: bool) -> None:
        self.edge = edge
        self._certified = certified_nodes  # the port requires client certificates

    @in_band(nodes_pb2.HeartbeatResponse, limited=False, leader=True)
    async def Heartbeat(
        self, request: nodes_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> nodes_pb2.HeartbeatResponse:
        node = node_identity(context, self._certified)
        timeout_s = await manager.heartbeat(request.job_id, node, handover_sent(context))
        response = nodes_pb2.HeartbeatResponse()
        response.timeout.FromTimedelta(timedelta(seconds=timeout_s))
        return response

    @in_band(nodes_pb2.ReturnUndeliveredResponse, limited=False, leader=True)
    async def ReturnUndelivered(
        self, request: nodes_pb2.ReturnUndeliveredRequest, context: grpc.aio.ServicerContext,
        manager: JobManager,
    ) -> nodes_pb2.ReturnUndeliveredResponse:
        self.edge.replicas.undelivered.give_back(request.call_id, context)
        return nodes_pb2.ReturnUndeliveredResponse()

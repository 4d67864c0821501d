"""How the gRPC edge answers each kind of ending (scheduler/services/edge.py, docs/errors.md), over
real gRPC on loopback with servicers that end as a test tells them: a refusal in band with
its reason, a failure of ours INTERNAL with an incident, bytes that are no request
INVALID_ARGUMENT, no leader or a starting scheduler transport UNAVAILABLE (which the SDK
retries), a leader's transport error passed back as is, the nodes' shared secret, and a
leader's call whose token is checked before it waits for a leader (issue 27, item 5).

tests/integration and tests/security drive the same through the whole scheduler; these
are fast enough for the mutation runs (docs/mutation.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import grpc
import pytest

from common.identity import Role, fingerprint
from job_manager.manager import JobManager
from leadership.lease import Lease
from message_manager import SchedulerError
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, execution_pb2_grpc, submission_pb2_grpc
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from scheduler.access.admission import Admission, TokenLimits, TokenShare
from scheduler.access.auth import TokenResolver
from scheduler.operations.health import EXECUTION, SUBMISSION
from scheduler.operations.metrics import Metrics
from scheduler.replication.forwarding import ForwardFailed
from scheduler.replication.replicas import NoLeader, Replicas
from scheduler.services.edge import DRAINING, STARTING, Edge, add_servicer, in_band
from tests.unit.test_lease import DURATION_S, RENEW_S, Clock, Table
from tests.unit.test_replica_calls import Manager, Passing, leader_and_follower, turns

SECRET = "s3cret"
ONE_AT_ONCE = {role: TokenShare(max_in_flight=1, rate_per_s=1000.0) for role in Role}


class Resolver:
    """A token database of one token, ``known``."""

    def __init__(self) -> None:
        self.roles: dict[str, Role] = {}
        self.resolved: list[str] = []

    async def resolve_for_call(self, token: str) -> None:
        self.resolved.append(token)
        if token != "known":
            raise SchedulerError("token_unknown")
        self.roles[fingerprint(token)] = Role.DEVELOPER


class Ends(submission_pb2_grpc.SubmissionServiceServicer):
    """GetJobStatus ends as ``end`` says (an exception is raised); SubmitJob, a leader's
    call, answers from whichever replica serves."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.end: BaseException | None = None
        self.submitted: list[JobManager] = []

    @in_band(pb.GetJobStatusResponse)
    async def GetJobStatus(self, request: pb.GetJobStatusRequest,
                           context: grpc.aio.ServicerContext,
                           manager: JobManager) -> pb.GetJobStatusResponse:
        if self.end is not None:
            raise self.end
        return pb.GetJobStatusResponse(status_detail=f"job {request.job_id}")

    @in_band(pb.SubmitJobResponse, leader=True)
    async def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext,
                        manager: JobManager) -> pb.SubmitJobResponse:
        self.submitted.append(manager)
        return pb.SubmitJobResponse(job_id="j1")


Stub = submission_pb2_grpc.SubmissionServiceStub


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Any]]:
    """Start a server of Ends on the edge ``make_edge`` builds; its servicer and a stub."""
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []

    async def start(edge: Edge) -> tuple[Ends, Stub, grpc.aio.Channel]:
        servicer = Ends(edge)
        server = grpc.aio.server()
        add_servicer(submission_pb2_grpc.add_SubmissionServiceServicer_to_server, servicer,
                     server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return servicer, Stub(channel), channel

    yield start
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop(0)


async def standalone(**settings: Any) -> Edge:
    metrics = Metrics()
    replicas = Replicas(lambda fence: cast(JobManager, Manager(fence)), metrics, monotonic=Clock())
    await replicas.start()
    edge = Edge(SUBMISSION, replicas, settings.pop("admission", Admission(10)), metrics,
                **settings)
    edge.take_calls()
    return edge


def calls(edge: Edge, method: str, code: str) -> float:
    labels = {"method": method, "code": code}
    return edge.metrics.registry.get_sample_value("mqc3_rpc_seconds_count", labels) or 0.0


async def counted(edge: Edge, method: str, code: str) -> float:
    """``calls`` once an aborted call was counted: the caller has the status before the
    handler's own task ends (the count is taken as it ends)."""
    for _ in range(100):
        if calls(edge, method, code):
            break
        await asyncio.sleep(0.01)
    return calls(edge, method, code)


def refusals(edge: Edge, reason: str) -> float:
    registry = edge.metrics.registry
    return registry.get_sample_value("mqc3_refusals_total", {"reason": reason}) or 0.0


async def test_a_refusal_is_answered_in_band_with_its_reason(serve: Any) -> None:
    edge = await standalone()
    servicer, stub, _ = await serve(edge)
    servicer.end = SchedulerError("job_not_found", job_id="j9")
    call = stub.GetJobStatus(pb.GetJobStatusRequest(job_id="j9"))
    answer = await call
    assert answer.error.code == "NOT_FOUND"
    assert answer.error.description == "job j9 was not found"  # no incident: not ours
    assert (await call.trailing_metadata())["x-mqc3-reason"] == "job_not_found"
    assert calls(edge, "GetJobStatus", "NOT_FOUND") == 1
    assert refusals(edge, "job_not_found") == 0  # only RESOURCE_EXHAUSTED is a refusal count


async def test_a_refusal_for_want_of_resources_is_counted_by_its_reason(serve: Any) -> None:
    edge = await standalone()
    servicer, stub, _ = await serve(edge)
    servicer.end = SchedulerError("queue_full", limit=10)
    call = stub.GetJobStatus(pb.GetJobStatusRequest(job_id="j9"))
    answer = await call
    incident = (await call.trailing_metadata())["x-mqc3-incident"]
    assert answer.error.description == (
        f"the job queues are full (10 bytes); try again later "
        f"[reason=queue_full incident={incident}]")
    assert refusals(edge, "queue_full") == 1
    assert calls(edge, "GetJobStatus", "RESOURCE_EXHAUSTED") == 1


async def test_a_failure_of_ours_is_internal_with_an_incident_in_the_log(
        serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    edge = await standalone()
    servicer, stub, _ = await serve(edge)
    servicer.end = RuntimeError("a bug")
    call = stub.GetJobStatus(pb.GetJobStatusRequest(job_id="j1"))
    answer = await call
    incident = (await call.trailing_metadata())["x-mqc3-incident"]
    assert answer.error.code == "INTERNAL"
    assert answer.error.description.endswith(f" [reason=unexpected incident={incident}]")
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in logged] == [
        f"GetJobStatus failed unexpectedly, incident {incident}"]
    assert logged[0].exc_info is not None  # with its traceback
    assert calls(edge, "GetJobStatus", "INTERNAL") == 1


async def test_no_leader_is_transport_unavailable_which_the_sdk_retries(serve: Any) -> None:
    edge = await standalone()
    servicer, stub, _ = await serve(edge)
    servicer.end = NoLeader("no leader could take the call within 30.0 s")
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stub.GetJobStatus(pb.GetJobStatusRequest(job_id="j1"))
    incident = ended.value.trailing_metadata()["x-mqc3-incident"]
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert ended.value.details() == (
        f"no leader could take the call within 30.0 s; retry [incident={incident}]")
    assert await counted(edge, "GetJobStatus", "UNAVAILABLE") == 1


async def test_a_leaders_transport_error_is_passed_back_as_it_came(serve: Any) -> None:
    edge = await standalone()
    servicer, stub, _ = await serve(edge)
    servicer.end = ForwardFailed(grpc.StatusCode.PERMISSION_DENIED, "not for you")
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stub.GetJobStatus(pb.GetJobStatusRequest(job_id="j1"),
                                metadata=(("x-request-id", "req-7"),))
    assert ended.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert ended.value.details() == "not for you"  # not ours: no incident
    trailing = ended.value.trailing_metadata()
    assert trailing.get("x-mqc3-incident") is None and trailing["x-request-id"] == "req-7"
    assert await counted(edge, "GetJobStatus", "PERMISSION_DENIED") == 1


async def test_a_call_while_the_scheduler_drains_is_transport_unavailable(serve: Any) -> None:
    edge = await standalone()
    edge.turn_away(DRAINING)
    _, stub, _ = await serve(edge)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stub.GetJobStatus(pb.GetJobStatusRequest(job_id="j1"))
    incident = ended.value.trailing_metadata()["x-mqc3-incident"]
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert ended.value.details() == f"{DRAINING} [incident={incident}]"


async def test_bytes_that_are_no_request_are_answered_invalid_argument_in_band(
        serve: Any) -> None:
    edge = await standalone()
    _, _, channel = await serve(edge)
    raw = channel.unary_unary("/mqc3_cloud.scheduler.v1.SubmissionService/GetJobStatus",
                              request_serializer=lambda data: data,
                              response_deserializer=pb.GetJobStatusResponse.FromString)
    call = raw(b"\xff\xff\xff")
    answer = await call
    assert answer.error.code == "INVALID_ARGUMENT"
    assert (await call.trailing_metadata())["x-mqc3-reason"] == "request_malformed"
    assert calls(edge, "GetJobStatus", "INVALID_ARGUMENT") == 1


def test_a_servicer_the_generated_code_does_not_register_is_refused() -> None:
    with pytest.raises(RuntimeError,
                       match=r"^the generated code registered no service: regenerate pb/$"):
        add_servicer(lambda servicer, server: None, object(), cast(Any, None))


@pytest.mark.parametrize(("sent", "code"), [
    (None, "UNAUTHENTICATED"), (f"Bearer {SECRET}x", "UNAUTHENTICATED"),
    (SECRET, "UNAUTHENTICATED"), (f"Bearer {SECRET}", "")])
async def test_with_a_shared_secret_only_calls_that_present_it_are_served(
        serve: Any, sent: str | None, code: str) -> None:
    edge = await standalone(shared_secret=SECRET)
    _, stub, _ = await serve(edge)
    metadata = (("authorization", sent),) if sent is not None else ()
    answer = await stub.GetJobStatus(pb.GetJobStatusRequest(job_id="j1"), metadata=metadata)
    assert answer.error.code == code


async def test_without_a_shared_secret_any_call_is_served(serve: Any) -> None:
    edge = await standalone()
    _, stub, _ = await serve(edge)
    answer = await stub.GetJobStatus(pb.GetJobStatusRequest(job_id="j1"),
                                     metadata=(("authorization", "Bearer other"),))
    assert answer.error.code == "" and answer.status_detail == "job j1"


async def test_a_leaders_call_runs_on_the_serving_manager_and_gives_its_slot_back(
        serve: Any) -> None:
    edge = await standalone()
    servicer, stub, _ = await serve(edge)
    answer = await stub.SubmitJob(pb.SubmitJobRequest(token="t"))
    assert answer.job_id == "j1" and servicer.submitted == [edge.replicas.manager]
    assert edge.admission.in_flight == 0
    assert calls(edge, "SubmitJob", "OK") == 1


async def leaderless(resolver: Resolver, wait_s: float) -> Edge:
    """An edge of a replica that follows no one (its lease's first round not yet made),
    with token shares of one call at once and ``resolver``'s token database."""
    metrics = Metrics()
    clock = Clock()
    lease = Lease(Table(), "a", clock, DURATION_S, RENEW_S)
    replicas = Replicas(lambda fence: cast(JobManager, Manager(fence)), metrics, monotonic=clock,
                        lease=lease, wait_s=wait_s)
    tokens = TokenLimits(ONE_AT_ONCE, resolver.roles.get, time.monotonic)
    edge = Edge(SUBMISSION, replicas, Admission(10), metrics, tokens=tokens,
                resolver=cast(TokenResolver, resolver))
    edge.take_calls()
    return edge


async def test_a_made_up_token_is_refused_before_it_waits_for_a_leader(serve: Any) -> None:
    resolver = Resolver()
    edge = await leaderless(resolver, wait_s=30.0)
    servicer, stub, _ = await serve(edge)
    answer = await stub.SubmitJob(pb.SubmitJobRequest(token="made-up"), timeout=10)
    assert answer.error.code == "UNAUTHENTICATED"  # at once, not after a 30 s wait
    assert servicer.submitted == [] and edge.replicas.room.calls == 0


async def test_a_waiting_token_counts_against_its_share_from_its_first_call(
        serve: Any) -> None:
    resolver = Resolver()
    edge = await leaderless(resolver, wait_s=30.0)
    _, stub, _ = await serve(edge)
    first = asyncio.ensure_future(stub.SubmitJob(pb.SubmitJobRequest(token="known"),
                                                 timeout=10))
    for _ in range(1000):
        if edge.replicas.room.calls:
            break
        await asyncio.sleep(0.001)
    assert edge.replicas.room.calls == 1 and edge.admission.in_flight == 0  # waits, slotless
    second = await stub.SubmitJob(pb.SubmitJobRequest(token="known"), timeout=10)
    assert second.error.code == "RESOURCE_EXHAUSTED"
    assert "x-mqc3-reason" not in second.error.description  # the reason is in metadata
    assert second.error.description.startswith("this token has 1 calls in progress")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_leaders_call_that_waited_in_vain_is_unavailable_and_frees_its_share(
        serve: Any) -> None:
    resolver = Resolver()
    edge = await leaderless(resolver, wait_s=0.05)
    _, stub, _ = await serve(edge)
    for _ in range(2):  # the second would be refused token_busy had the first kept its share
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await stub.SubmitJob(pb.SubmitJobRequest(token="known"), timeout=10)
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
        # The caller has the status before the handler's task ends and lets its slot go.
        await turns(lambda: edge.admission.in_flight == 0, sleep_s=0.01)
    assert resolver.resolved == ["known", "known"]
    assert edge.replicas.room.calls == 0


async def test_an_edge_turns_calls_away_until_its_scheduler_has_started(serve: Any) -> None:
    metrics = Metrics()
    edge = Edge(SUBMISSION, Replicas(lambda fence: cast(JobManager, Manager(fence)), metrics,
                                     monotonic=Clock()),
                Admission(10), metrics)
    _, stub, _ = await serve(edge)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stub.GetJobStatus(pb.GetJobStatusRequest(job_id="j1"))
    incident = ended.value.trailing_metadata()["x-mqc3-incident"]
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert ended.value.details() == f"{STARTING} [incident={incident}]"


class Nodes(execution_pb2_grpc.ExecutionServiceServicer):
    """AssignNextJob, a leader's call whose request names no token (a node's)."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    @in_band(execution_pb2.AssignNextJobResponse, limited=False, leader=True)
    async def AssignNextJob(self, request: execution_pb2.AssignNextJobRequest,
                            context: grpc.aio.ServicerContext,
                            manager: JobManager) -> execution_pb2.AssignNextJobResponse:
        return execution_pb2.AssignNextJobResponse(job_id="j1")


async def test_a_leaders_call_on_a_port_that_resolves_no_tokens_just_waits() -> None:
    # The execution port: nodes' requests name no token, and no token is resolved there.
    metrics = Metrics()
    clock = Clock()
    lease = Lease(Table(), "a", clock, DURATION_S, RENEW_S)
    replicas = Replicas(lambda fence: cast(JobManager, Manager(fence)), metrics, monotonic=clock,
                        lease=lease, wait_s=0.05)
    edge = Edge(EXECUTION, replicas, Admission(10), metrics)
    edge.take_calls()
    submissions = Edge(SUBMISSION, replicas, Admission(10), metrics)
    submissions.take_calls()
    server = grpc.aio.server()
    add_servicer(execution_pb2_grpc.add_ExecutionServiceServicer_to_server, Nodes(edge), server)
    add_servicer(submission_pb2_grpc.add_SubmissionServiceServicer_to_server,
                 Ends(submissions), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for call in (execution_pb2_grpc.ExecutionServiceStub(channel).AssignNextJob(
                             execution_pb2.AssignNextJobRequest(), timeout=10),
                         Stub(channel).SubmitJob(pb.SubmitJobRequest(token="t"), timeout=10)):
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await call
                assert ended.value.code() is grpc.StatusCode.UNAVAILABLE  # not INTERNAL
    finally:
        await server.stop(0)


async def test_a_followers_edge_passes_a_call_on_at_its_full_path(serve: Any) -> None:
    forwarder = Passing()
    _, follower = await leader_and_follower(Table(), Clock(), forwarder)
    edge = Edge(SUBMISSION, follower, Admission(10), Metrics())
    edge.take_calls()
    _, stub, _ = await serve(edge)
    answer = await stub.SubmitJob(pb.SubmitJobRequest(token="t"), timeout=10)
    assert answer.job_id == "j1"
    assert [sent[:2] for sent in forwarder.calls] == [
        ("a:8082", "/mqc3_cloud.scheduler.v1.SubmissionService/SubmitJob")]

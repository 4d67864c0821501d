"""The gRPC edge answers every call, also when work it shared with others was cancelled; it
holds each token to its share of the calls in progress, refusing that token only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest

from common.clock import FakeClock
from common.identity import Role
from job_manager.manager import JobManager
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from pb.mqc3_cloud.scheduler.v1 import submission_pb2_grpc
from scheduler.access.admission import Admission, TokenLimits, TokenShare
from scheduler.operations.health import SUBMISSION
from scheduler.operations.metrics import Metrics
from scheduler.replication.replicas import Replicas
from scheduler.services.edge import INTERRUPTED, Edge, in_band


class SharedWork(submission_pb2_grpc.SubmissionServiceServicer):
    """GetServiceStatus waits for work it shares with other calls (as a single flight)."""

    def __init__(self, tokens: TokenLimits | None = None,
                 admission: Admission | None = None) -> None:
        metrics = Metrics()
        no_manager = Replicas(lambda fence: cast(JobManager, None), metrics,  # reads none
                              monotonic=FakeClock().monotonic)
        self.edge = Edge(SUBMISSION, no_manager, admission or Admission(10), metrics,
                         tokens=tokens)
        self.edge.take_calls()
        self.work: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting = asyncio.Event()

    @in_band(pb.GetServiceStatusResponse)
    async def GetServiceStatus(self, request: pb.GetServiceStatusRequest,
                               context: grpc.aio.ServicerContext,
                               manager: JobManager) -> pb.GetServiceStatusResponse:
        self.waiting.set()
        await asyncio.shield(self.work)
        return pb.GetServiceStatusResponse(description="done")


@pytest.fixture
def tokens() -> TokenLimits | None:
    return None


@pytest.fixture
def admission() -> Admission | None:
    return None


@pytest.fixture
async def served(tokens: TokenLimits | None, admission: Admission | None,
                 ) -> AsyncIterator[tuple[SharedWork, submission_pb2_grpc.SubmissionServiceStub]]:
    servicer = SharedWork(tokens, admission)
    server = grpc.aio.server()
    submission_pb2_grpc.add_SubmissionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield servicer, submission_pb2_grpc.SubmissionServiceStub(channel)
    await server.stop(0)


async def test_shared_work_cancelled_under_a_call_is_answered_unavailable(
        served: tuple[SharedWork, submission_pb2_grpc.SubmissionServiceStub]) -> None:
    servicer, stub = served
    call = asyncio.ensure_future(stub.GetServiceStatus(pb.GetServiceStatusRequest(), timeout=5))
    await servicer.waiting.wait()
    servicer.work.cancel()  # not the caller's doing: the work it waited for was stopped
    with pytest.raises(grpc.aio.AioRpcError) as answer:
        await call
    assert answer.value.code() is grpc.StatusCode.UNAVAILABLE  # which the SDK retries
    details = answer.value.details()
    incident = answer.value.trailing_metadata()["x-mqc3-incident"]
    assert details == f"{INTERRUPTED} [incident={incident}]"  # quotable, as is the log line


async def test_shared_work_that_ends_answers_the_call(
        served: tuple[SharedWork, submission_pb2_grpc.SubmissionServiceStub]) -> None:
    servicer, stub = served
    call = asyncio.ensure_future(stub.GetServiceStatus(pb.GetServiceStatusRequest(), timeout=5))
    await servicer.waiting.wait()
    servicer.work.set_result(None)
    assert (await call).description == "done"


async def test_a_call_whose_caller_left_is_counted_cancelled_not_internal(
        served: tuple[SharedWork, submission_pb2_grpc.SubmissionServiceStub]) -> None:
    servicer, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stub.GetServiceStatus(pb.GetServiceStatusRequest(), timeout=0.2)
    assert ended.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    registry = servicer.edge.metrics.registry

    def count(code: str) -> float:
        labels = {"method": "GetServiceStatus", "code": code}
        return registry.get_sample_value("mqc3_rpc_seconds_count", labels) or 0.0

    for _ in range(100):  # the handler's cancellation lands just after the caller's deadline
        if count("CANCELLED"):
            break
        await asyncio.sleep(0.01)
    assert count("CANCELLED") > 0
    assert count("INTERNAL") == 0


TWO_AT_ONCE = {role: TokenShare(max_in_flight=2, rate_per_s=1000.0) for role in Role}


@pytest.mark.parametrize("tokens", [
    TokenLimits(TWO_AT_ONCE, lambda key: Role.DEVELOPER, time.monotonic)])
async def test_a_token_past_its_calls_in_progress_is_refused_and_no_other_token(
        served: tuple[SharedWork, submission_pb2_grpc.SubmissionServiceStub]) -> None:
    servicer, stub = served

    def ask(token: str) -> asyncio.Future[pb.GetServiceStatusResponse]:
        return asyncio.ensure_future(
            stub.GetServiceStatus(pb.GetServiceStatusRequest(token=token), timeout=5))

    held = [ask("flood"), ask("flood")]
    while servicer.edge.admission.in_flight < 2:
        await asyncio.sleep(0.01)
    call = stub.GetServiceStatus(pb.GetServiceStatusRequest(token="flood"), timeout=5)
    refused = await call
    assert refused.error.code == "RESOURCE_EXHAUSTED"
    assert refused.error.description.startswith("this token has 2 calls in progress")
    incident = (await call.trailing_metadata())["x-mqc3-incident"]
    assert refused.error.description.endswith(f" [reason=token_busy incident={incident}]")
    assert (await call.trailing_metadata())["x-mqc3-reason"] == "token_busy"
    honest = [ask("honest"), ask("honest")]
    while servicer.edge.admission.in_flight < 4:
        await asyncio.sleep(0.01)
    servicer.work.set_result(None)
    answers = await asyncio.gather(*held, *honest)
    assert [answer.description for answer in answers] == ["done"] * 4
    assert (await ask("flood")).description == "done"  # its calls ended: it may call again


@pytest.mark.parametrize("admission", [Admission(limit=1, max_waiting=1)])
async def test_past_the_limit_a_call_waits_its_turn_and_past_the_waiting_room_is_refused(
        served: tuple[SharedWork, submission_pb2_grpc.SubmissionServiceStub]) -> None:
    servicer, stub = served
    admission = servicer.edge.admission
    request = pb.GetServiceStatusRequest(token="t")
    held = asyncio.ensure_future(stub.GetServiceStatus(request, timeout=5))
    await servicer.waiting.wait()
    waits = asyncio.ensure_future(stub.GetServiceStatus(request, timeout=5))
    while admission.waiting < 1:
        await asyncio.sleep(0.01)
    call = stub.GetServiceStatus(request, timeout=5)
    refused = await call
    assert refused.error.code == "RESOURCE_EXHAUSTED"
    assert (await call.trailing_metadata())["x-mqc3-reason"] == "overloaded"
    assert not waits.done()  # waiting, not refused
    servicer.work.set_result(None)
    answers = await asyncio.gather(held, waits)
    assert [answer.error.code for answer in answers] == ["", ""]
    assert admission.in_flight == 0 and admission.waiting == 0

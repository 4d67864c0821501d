"""Server reflection on both ports, as grpcurl uses it, also while the services are saturated."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import Running, scheduler_in
from tests.helpers import TokenDatabase
from tests.integration.processes import HOST
from tests.operations.support import (
    EXECUTION,
    SATURATION_ENV,
    SUBMISSION,
    saturated,
)

HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
TIMEOUT_S = 2.0


async def _ask(channel: grpc.aio.Channel,
               request: reflection_pb2.ServerReflectionRequest
               ) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT_S)
    answers = [answer async for answer in call]
    assert len(answers) == 1, answers
    return answers[0]


async def _services(channel: grpc.aio.Channel) -> set[str]:
    answer = await _ask(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    assert answer.WhichOneof("message_response") == "list_services_response", answer
    return {service.name for service in answer.list_services_response.service}


async def _pool_for(channel: grpc.aio.Channel, symbol: str) -> descriptor_pool.DescriptorPool:
    """What grpcurl does: the file defining ``symbol``, then every dependency it names."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def take(answer: reflection_pb2.ServerReflectionResponse) -> None:
        assert answer.WhichOneof("message_response") == "file_descriptor_response", answer
        for raw in answer.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files[proto.name] = proto

    take(await _ask(channel, reflection_pb2.ServerReflectionRequest(
        file_containing_symbol=symbol)))
    missing = {dep for f in files.values() for dep in f.dependency} - files.keys()
    while missing:
        take(await _ask(channel, reflection_pb2.ServerReflectionRequest(
            file_by_filename=missing.pop())))
        missing = {dep for f in files.values() for dep in f.dependency} - files.keys()

    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:
        if name in added:
            return
        for dep in files[name].dependency:
            add(dep)
        pool.Add(files[name])
        added.add(name)

    for name in files:
        add(name)
    return pool


async def _assert_reflects(port: int, own: str, other: str) -> None:
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        services = await _services(channel)
        assert {own, HEALTH, REFLECTION} <= services, services
        assert other not in services, services  # each port lists what it serves

        pool = await _pool_for(channel, own)
        service = pool.FindServiceByName(own)
        assert service.methods, own
        # Enough to build a call: every method's request and response types resolve.
        for method in service.methods:
            assert method.input_type.full_name and method.output_type.full_name


async def test_each_port_lists_its_service_health_and_reflection(running: Running) -> None:
    await _assert_reflects(running.scheduler.submission_port, SUBMISSION, EXECUTION)
    await _assert_reflects(running.scheduler.execution_port, EXECUTION, SUBMISSION)


async def test_reflection_describes_the_submit_call_as_grpcurl_needs(running: Running) -> None:
    async with grpc.aio.insecure_channel(f"{HOST}:{running.scheduler.submission_port}") as ch:
        # grpcurl asks for the file containing the service, then finds the method in it.
        pool = await _pool_for(ch, SUBMISSION)
    method = pool.FindMethodByName(f"{SUBMISSION}.SubmitJob")
    assert method.input_type.full_name == "mqc3_cloud.scheduler.v1.SubmitJobRequest"
    assert "token" in method.input_type.fields_by_name
    assert "job" in method.input_type.fields_by_name


async def test_reflection_answers_while_both_services_are_saturated(
    mode: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    token_database: TokenDatabase,
) -> None:
    async with scheduler_in(mode, tmp_path, request, token_database, SATURATION_ENV) as running:
        async with saturated(running, monkeypatch):
            for _ in range(3):
                await _assert_reflects(running.scheduler.submission_port, SUBMISSION, EXECUTION)
                await _assert_reflects(running.scheduler.execution_port, EXECUTION, SUBMISSION)

"""Shared test helpers: configs for both modes, AWS resources on moto, request builders,
and the check of a refusal's exact words."""

from __future__ import annotations

import gzip
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
from botocore.config import Config as BotoConfig

from common.clock import SystemClock
from job_manager.stores.dynamodb_job_store import create_table
from message_manager import SchedulerError
from message_manager.keys import ErrorKey
from pb.mqc3_cloud.program.v1 import quantum_program_pb2 as program_pb2
from pb.mqc3_cloud.scheduler.v1 import (
    execution_pb2,
    execution_pb2_grpc,
    submission_pb2,
    submission_pb2_grpc,
)
from pb.mqc3_cloud.token_database.v1 import token_database_pb2_grpc
from scheduler.wiring.config import Config, load_config
from scheduler.wiring.standalone import token_store_path
from token_database.service import TokenDatabaseService, create_token
from token_database.store import SqliteTokenStore

REGION = "us-east-1"
PORT_FLAGS = ["--host", "127.0.0.1", "--port-for-submission", "0", "--port-for-execution", "0",
              "--metrics-port", "0"]

TEST_BACKENDS_TOML = """
[backends.emulator.admin]
status = "available"
description = "emulator up"
[backends.emulator.developer]
status = "available"
description = "emulator up"
[backends.emulator.guest]
status = "available"
description = "emulator up"
[backends.qpu.admin]
status = "available"
description = "qpu up"
[backends.qpu.developer]
status = "maintenance"
description = "qpu calibration until 18:00"
[backends.qpu.guest]
status = "unavailable"
description = "qpu is not offered to guests"
"""


# Tests about other things take nodes with no credential; tests of the node credential
# (tests/security/test_local_accounts.py) and the examples' test run without this.
OPEN_NODES = "--insecure-execution"


def local_config(data_dir: Path, *extra: str, env: dict[str, str] | None = None,
                 open_nodes: bool = True) -> Config:
    """A standalone config on loopback with every port chosen by the OS."""
    argv = [
        *([OPEN_NODES] if open_nodes else []),
        "--local",
        "--data-dir",
        str(data_dir),
        *PORT_FLAGS,
        "--port-for-token-database",
        "0",
        "--http-port",
        "0",
        *extra,
    ]
    return load_config(argv, env or {})


@dataclass(frozen=True)
class AwsNames:
    """The AWS resources one test's scheduler uses."""

    endpoint: str
    bucket: str
    table: str
    bucket_key: str = "/mqc3/test/job_bucket_name"
    table_key: str = "/mqc3/test/job_table_name"
    backends_key: str = "/mqc3/test/backend_status"


def aws_client(service: Any, endpoint: str, retries: int | None = None) -> Any:
    """A boto3 client of the moto server; ``retries``: its attempts in all (botocore's
    default when None)."""
    config = None if retries is None else BotoConfig(
        retries={"mode": "standard", "total_max_attempts": retries})
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    )


def create_aws_resources(
    endpoint: str, suffix: str, backends_toml: str = TEST_BACKENDS_TOML,
    owner_index: bool = True,
) -> AwsNames:
    """A bucket, a jobs table and the SSM parameters naming them, on a moto server (without
    ``owner_index``, the table as the original deployment has it)."""
    names = AwsNames(
        endpoint=endpoint,
        bucket=f"jobs-{suffix}",
        table=f"jobs-{suffix}",
        bucket_key=f"/mqc3/{suffix}/job_bucket_name",
        table_key=f"/mqc3/{suffix}/job_table_name",
        backends_key=f"/mqc3/{suffix}/backend_status",
    )
    aws_client("s3", endpoint).create_bucket(Bucket=names.bucket)
    create_table(aws_client("dynamodb", endpoint), names.table, owner_index=owner_index)
    ssm = aws_client("ssm", endpoint)
    ssm.put_parameter(Name=names.bucket_key, Value=names.bucket, Type="String")
    ssm.put_parameter(Name=names.table_key, Value=names.table, Type="String")
    ssm.put_parameter(Name=names.backends_key, Value=backends_toml, Type="String")
    return names


def aws_config(
    names: AwsNames, token_address: str, *extra: str, env: dict[str, str] | None = None
) -> Config:
    """An AWS-mode config against a moto server, on loopback."""
    argv = [
        *PORT_FLAGS,
        "--dev",
        "--endpoint",
        names.endpoint,
        "--region",
        REGION,
        "-k",
        "testing",
        "-s",
        "testing",
        "--job_bucket_name_key",
        names.bucket_key,
        "--job_table_name_key",
        names.table_key,
        "--backend_status_parameter_name",
        names.backends_key,
        "--address_to_token_database",
        token_address,
        *extra,
    ]
    return load_config(argv, env or {})


class TokenDatabase:
    """A TokenDatabaseService on loopback over a SQLite file, for AWS-mode tests."""

    def __init__(self, path: Path) -> None:
        self.store = SqliteTokenStore(path)
        self.server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self) -> None:
        self.server = grpc.aio.server()
        token_database_pb2_grpc.add_TokenDatabaseServiceServicer_to_server(
            TokenDatabaseService(self.store, SystemClock()), self.server
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
        self.store.close()

    def token(self, name: str, role: str) -> str:
        return create_token(self.store, SystemClock(), name, role)[0]


def standalone_token(data_dir: Path, name: str, role: str) -> str:
    """A token made in a standalone data directory's token database."""
    store = SqliteTokenStore(token_store_path(data_dir))
    try:
        return create_token(store, SystemClock(), name, role)[0]
    finally:
        store.close()


def program(
    payload: bytes = b"\x08\x02\x12\x04\x08\x01\x10\x00",
    fmt: Any = program_pb2.REPRESENTATION_FORMAT_CIRCUIT,
) -> program_pb2.QuantumProgram:
    """A QuantumProgram whose payload the scheduler does not interpret."""
    field = {
        program_pb2.REPRESENTATION_FORMAT_CIRCUIT: "circuit",
        program_pb2.REPRESENTATION_FORMAT_GRAPH: "graph",
        program_pb2.REPRESENTATION_FORMAT_MACHINERY: "machinery",
    }[fmt]
    message = program_pb2.QuantumProgram(format=fmt)
    setattr(message, field, payload)
    return message


def submit_request(
    token: str,
    backend: str = "emulator",
    *,
    timeout_s: int = 60,
    n_shots: int = 100,
    payload: bytes | None = None,
) -> submission_pb2.SubmitJobRequest:
    """A valid SubmitJobRequest."""
    request = submission_pb2.SubmitJobRequest(token=token, sdk_version="1.0.0")
    request.job.program.CopyFrom(program(payload) if payload is not None else program())
    request.job.settings.backend = backend
    request.job.settings.n_shots = n_shots
    request.job.settings.timeout.seconds = timeout_s
    return request


class Clients:
    """Async stubs of both services of one running scheduler."""

    def __init__(self, submission_port: int, execution_port: int) -> None:
        self._channels = [
            grpc.aio.insecure_channel(f"127.0.0.1:{submission_port}"),
            grpc.aio.insecure_channel(f"127.0.0.1:{execution_port}"),
        ]
        self.submission = submission_pb2_grpc.SubmissionServiceStub(self._channels[0])
        self.execution = execution_pb2_grpc.ExecutionServiceStub(self._channels[1])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def assign(self, backend: str = "emulator") -> execution_pb2.AssignNextJobResponse:
        return await self.execution.AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend=backend), timeout=10
        )


def gzip_result(raw: bytes) -> bytes:
    """A result body as a node uploads it."""
    return gzip.compress(raw)


UPLOAD_HEADERS = {
    "Content-Type": "application/protobuf",
    "Content-Encoding": "gzip",
    "Content-Disposition": "attachment",
}


async def refused_as(call: Awaitable[Any], key: ErrorKey, **params: object) -> SchedulerError:
    """``call`` is refused with the catalogue's ``key``: the code and the words a caller is
    sent, naming exactly ``params``."""
    with pytest.raises(SchedulerError) as info:
        await call
    expected = SchedulerError(key, **params)
    assert (info.value.key, info.value.code, str(info.value)) == (
        key, expected.code, str(expected))
    return info.value

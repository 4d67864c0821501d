"""AWS mode: DynamoDB for records, S3 for payloads, SSM for names and backend status."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from backend_manager.sources import SsmBackendSource
from common.clock import Clock
from job_manager.stores.dynamodb_job_store import DynamoDbJobStore, missing_from_table
from job_manager.stores.s3_payload_store import S3PayloadStore
from job_manager.stores.unreadable import UnreadableRecords
from leadership.dynamodb_lease import DynamoDbLeaseTable
from scheduler.wiring.config import AwsConfig, ConfigError, ReplicaConfig
from scheduler.wiring.stack import Stack

# Standard retries: bounded exponential backoff with jitter on throttling and 5xx.
_RETRIES: Any = {"mode": "standard", "max_attempts": 5}
# DynamoDB's calls while replicas share the lease end well within the time a leader may go
# without renewing (docs/replicas.md, "Time limits of each call"): each attempt gets an
# eighth of ``duration - renew`` to connect and as long to answer (0.56 s by default,
# about a hundred times DynamoDB's usual answer), and a call is tried at most twice.
_JOB_CALL_ATTEMPTS = 2


@dataclass(frozen=True)
class StoreCallLimits:
    """How long one botocore attempt may take to connect and to answer, and how many
    attempts a call makes."""

    connect_s: float
    read_s: float
    attempts: int

    def botocore(self) -> BotoConfig:
        """These limits as a botocore client's configuration."""
        return BotoConfig(connect_timeout=self.connect_s, read_timeout=self.read_s,
                          retries={"mode": "standard", "total_max_attempts": self.attempts})


def job_call_limits(replicas: ReplicaConfig) -> StoreCallLimits:
    """The job store's DynamoDB calls: with its retry and botocore's backoff (at most
    1 s before a throttled call's second attempt), one ends within half of the margin
    ``duration - renew`` when that is 4 s or more (the defaults: 4.5 s), and within the
    margin itself from 1.5 s up."""
    attempt_s = (replicas.lease_duration_s - replicas.lease_renew_s) / 8
    return StoreCallLimits(attempt_s, attempt_s, _JOB_CALL_ATTEMPTS)


def lease_call_limits(replicas: ReplicaConfig) -> StoreCallLimits:
    """The lease's own calls: one attempt (its retry is the next round), which ends
    within two rounds; the round waits for it one (leadership/lease.py)."""
    return StoreCallLimits(replicas.lease_renew_s, replicas.lease_renew_s, 1)


@dataclass(frozen=True)
class Clients:
    """The botocore clients of AWS mode; ``lease`` is a DynamoDB client of its own."""

    ssm: Any
    dynamodb: Any
    s3: Any
    lease: Any


def _clients(aws: AwsConfig, replicas: ReplicaConfig | None) -> Clients:
    """``replicas``: the lease's settings the DynamoDB calls are bounded by; None for the
    migration commands, which lead nothing and scan whole tables, and for emulators."""
    session = boto3.session.Session(
        aws_access_key_id=aws.access_key_id,
        aws_secret_access_key=aws.secret_access_key,
        region_name=aws.region,
    )
    # Every request is built by this code, never from a caller's values: botocore's
    # check of each one against the service model costs CPU on every call and finds
    # nothing (its documented switch for performance; the tests run with it off too).
    common = BotoConfig(retries=_RETRIES, max_pool_connections=32, parameter_validation=False)
    # S3 carries programs and results of up to many MB and is not on the lease's path:
    # it keeps botocore's long timeouts.
    s3_config = common.merge(BotoConfig(s3={"addressing_style": "path"}, signature_version="s3v4"))
    jobs_config = lease_config = common
    if replicas is not None:
        jobs_config = common.merge(job_call_limits(replicas).botocore())
        lease_config = common.merge(lease_call_limits(replicas).botocore())
    return Clients(
        ssm=session.client("ssm", endpoint_url=aws.endpoint, config=common),
        dynamodb=session.client("dynamodb", endpoint_url=aws.endpoint, config=jobs_config),
        s3=session.client("s3", endpoint_url=aws.s3_endpoint or aws.endpoint, config=s3_config),
        lease=session.client("dynamodb", endpoint_url=aws.endpoint, config=lease_config),
    )


def _parameter(ssm: Any, name: str, flag: str) -> str:
    try:
        return str(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])
    except (ClientError, BotoCoreError) as exc:
        raise ConfigError(f"{flag} {name!r}: the SSM parameter could not be read ({exc})") from None


def _check_table(dynamodb: Any, table: str, status_index: str) -> None:
    try:
        description = dynamodb.describe_table(TableName=table)
    except (ClientError, BotoCoreError) as exc:
        raise ConfigError(
            f"--job_table_name_key: table {table!r} is not reachable ({exc})") from None
    missing = missing_from_table(description, status_index)
    if missing is not None:
        raise ConfigError(f"--job_table_name_key: table {table!r} needs {missing}")


def _check_reachable(dynamodb: Any, table: str, status_index: str, s3: Any,
                     bucket: str) -> None:
    _check_table(dynamodb, table, status_index)
    try:
        s3.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as exc:
        raise ConfigError(
            f"--job_bucket_name_key: bucket {bucket!r} is not reachable ({exc})") from None


async def aws_stack(aws: AwsConfig, clock: Clock, key_window: timedelta,
                    unreadable: UnreadableRecords,
                    replicas: ReplicaConfig | None = None) -> Stack:
    """Look up the bucket and table names in SSM and connect the stores."""
    replicas = ReplicaConfig() if replicas is None else replicas
    # An emulator (--dev --endpoint) keeps botocore's long limits: moto copies the whole
    # table for each action of a transaction, and its answers take what they take.
    clients = _clients(aws, replicas if aws.endpoint is None else None)
    ssm, dynamodb, s3 = clients.ssm, clients.dynamodb, clients.s3
    bucket = await asyncio.to_thread(
        _parameter, ssm, aws.job_bucket_name_key, "--job_bucket_name_key"
    )
    table = await asyncio.to_thread(_parameter, ssm, aws.job_table_name_key, "--job_table_name_key")
    secret = None
    if aws.execution_secret_parameter:
        secret = await asyncio.to_thread(_parameter, ssm, aws.execution_secret_parameter,
                                         "--execution-secret-parameter")
    await asyncio.to_thread(_check_reachable, dynamodb, table, aws.status_index, s3, bucket)
    return Stack(
        execution_secret=secret,
        jobs=DynamoDbJobStore(dynamodb, table, key_window=key_window,
                              status_index=aws.status_index, unreadable=unreadable),
        payloads=S3PayloadStore(s3, bucket, clock),
        backend_source=SsmBackendSource(ssm, aws.backend_status_parameter_name),
        lease_table=DynamoDbLeaseTable(clients.lease, table),
    )


async def aws_job_store(aws: AwsConfig) -> DynamoDbJobStore:
    """The jobs table alone, for the migration commands (docs/migrating.md)."""
    clients = _clients(aws, None)
    ssm, dynamodb = clients.ssm, clients.dynamodb
    table = await asyncio.to_thread(_parameter, ssm, aws.job_table_name_key, "--job_table_name_key")
    await asyncio.to_thread(_check_table, dynamodb, table, aws.status_index)
    return DynamoDbJobStore(dynamodb, table, status_index=aws.status_index)

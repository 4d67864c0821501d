"""AWS mode: DynamoDB for records, S3 for payloads, SSM for names and backend status."""

from __future__ import annotations

import asyncio
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
from scheduler.config import AwsConfig, ConfigError
from scheduler.stack import Stack

# Standard retries: bounded exponential backoff with jitter on throttling and 5xx.
_RETRIES: Any = {"mode": "standard", "max_attempts": 5}


def _clients(aws: AwsConfig) -> tuple[Any, Any, Any]:
    session = boto3.session.Session(
        aws_access_key_id=aws.access_key_id,
        aws_secret_access_key=aws.secret_access_key,
        region_name=aws.region,
    )
    # Every request is built by this code, never from a caller's values: botocore's
    # check of each one against the service model costs CPU on every call and finds
    # nothing (its documented switch for performance; the tests run with it off too).
    common = BotoConfig(retries=_RETRIES, max_pool_connections=32, parameter_validation=False)
    s3_config = common.merge(BotoConfig(s3={"addressing_style": "path"}, signature_version="s3v4"))
    ssm = session.client("ssm", endpoint_url=aws.endpoint, config=common)
    dynamodb = session.client("dynamodb", endpoint_url=aws.endpoint, config=common)
    s3 = session.client("s3", endpoint_url=aws.s3_endpoint or aws.endpoint, config=s3_config)
    return ssm, dynamodb, s3


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
                    unreadable: UnreadableRecords) -> Stack:
    """Look up the bucket and table names in SSM and connect the stores."""
    ssm, dynamodb, s3 = _clients(aws)
    bucket = await asyncio.to_thread(
        _parameter, ssm, aws.job_bucket_name_key, "--job_bucket_name_key"
    )
    table = await asyncio.to_thread(_parameter, ssm, aws.job_table_name_key, "--job_table_name_key")
    secret = None
    if aws.execution_secret_parameter:
        secret = await asyncio.to_thread(_parameter, ssm, aws.execution_secret_parameter,
                                         "--execution-secret-parameter")
    await asyncio.to_thread(_check_reachable, dynamodb, table, aws.status_index, s3, bucket)
    # The lease's writes and the fenced job transactions name the same item, which
    # DynamoDB lets only one of them hold at a time: they take turns (docs/replicas.md).
    lease_item = asyncio.Lock()
    return Stack(
        execution_secret=secret,
        jobs=DynamoDbJobStore(dynamodb, table, key_window=key_window,
                              status_index=aws.status_index, unreadable=unreadable,
                              gate=lease_item),
        payloads=S3PayloadStore(s3, bucket, clock),
        backend_source=SsmBackendSource(ssm, aws.backend_status_parameter_name),
        lease_table=DynamoDbLeaseTable(dynamodb, table, gate=lease_item),
    )


async def aws_job_store(aws: AwsConfig) -> DynamoDbJobStore:
    """The jobs table alone, for the migration commands (docs/migrating.md)."""
    ssm, dynamodb, _ = _clients(aws)
    table = await asyncio.to_thread(_parameter, ssm, aws.job_table_name_key, "--job_table_name_key")
    await asyncio.to_thread(_check_table, dynamodb, table, aws.status_index)
    return DynamoDbJobStore(dynamodb, table, status_index=aws.status_index)

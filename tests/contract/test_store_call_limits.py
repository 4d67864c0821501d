"""Every DynamoDB call ends well before the lease's deadline (docs/replicas.md, "Time
limits of each call"; issue 27, item 7): a leader whose store hangs learns it while it
can still step down in order, and a hung call frees its thread and the job committer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

from scheduler.wiring import aws
from scheduler.wiring.config import AwsConfig, ReplicaConfig

LEASES = [ReplicaConfig(), ReplicaConfig(lease_duration_s=30, lease_renew_s=5),
          ReplicaConfig(lease_duration_s=8, lease_renew_s=4)]
SHORT_LEASES = [ReplicaConfig(lease_duration_s=3, lease_renew_s=1.5),
                ReplicaConfig(lease_duration_s=2, lease_renew_s=0.5)]
THROTTLED_BACKOFF_S = 1.0  # botocore's standard mode, before a throttled call's second try


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An address that takes connections (the kernel's backlog) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def _worst_s(limits: aws.StoreCallLimits) -> float:
    attempt_s = limits.connect_s + limits.read_s
    return max(limits.attempts * attempt_s, (limits.attempts - 1) * THROTTLED_BACKOFF_S + attempt_s)


@pytest.mark.parametrize("lease", LEASES)
def test_a_job_call_with_its_retry_ends_within_half_of_the_leaders_margin(
        lease: ReplicaConfig) -> None:
    limits = aws.job_call_limits(lease)
    assert limits.attempts >= 2  # a dropped connection or a throttle is tried again
    assert _worst_s(limits) <= (lease.lease_duration_s - lease.lease_renew_s) / 2


@pytest.mark.parametrize("lease", SHORT_LEASES)
def test_under_a_short_lease_a_job_call_ends_within_the_leaders_margin(
        lease: ReplicaConfig) -> None:
    # botocore's backoff before a throttled retry does not shrink with the lease.
    limits = aws.job_call_limits(lease)
    assert _worst_s(limits) <= lease.lease_duration_s - lease.lease_renew_s


@pytest.mark.parametrize("lease", [*LEASES, *SHORT_LEASES])
def test_a_lease_call_ends_within_two_rounds(lease: ReplicaConfig) -> None:
    assert _worst_s(aws.lease_call_limits(lease)) <= 2 * lease.lease_renew_s


async def test_a_hung_dynamodb_call_fails_with_a_timeout_before_the_lease_lapses(
        silent_endpoint: str) -> None:
    # Before: botocore's defaults (60 s to answer, five attempts), so the call was still
    # waiting when the lease's duration was over (checked with the same call).
    lease = ReplicaConfig()
    config = AwsConfig("us-east-1", "bucket", "table", "backends", access_key_id="test",
                       secret_access_key="test", endpoint=silent_endpoint)
    clients = aws._clients(config, lease)
    for client in (clients.dynamodb, clients.lease):
        call = asyncio.to_thread(client.get_item, TableName="jobs",
                                 Key={"job_id": {"S": "a"}})
        with pytest.raises((ReadTimeoutError, ConnectTimeoutError)):
            # The bound only keeps a failing run from hanging: the lease's whole duration.
            await asyncio.wait_for(call, lease.lease_duration_s)

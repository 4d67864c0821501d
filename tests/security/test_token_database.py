"""The TokenDatabaseService over real gRPC, on SQLite and on DynamoDB (moto), and how the
scheduler's token cache follows it: deletes and renewals within the TTL, and an outage."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from common.clock import SystemClock
from common.identity import fingerprint
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as spb
from pb.mqc3_cloud.scheduler.v1 import submission_pb2_grpc
from pb.mqc3_cloud.token_database.v1 import token_database_pb2 as pb
from pb.mqc3_cloud.token_database.v1 import token_database_pb2_grpc
from scheduler.wiring.app import Scheduler
from scheduler.wiring.standalone import token_secret_path
from tests.helpers import (
    TEST_BACKENDS_TOML,
    AwsNames,
    Clients,
    TokenDatabase,
    aws_client,
    aws_config,
    local_config,
    submit_request,
)
from token_database.credential import PresentCredential, load_or_create_secret
from token_database.dynamodb_store import DynamoDbTokenStore, create_token_table
from token_database.service import TokenDatabaseService
from token_database.store import FINGERPRINT_PREFIX, SqliteTokenStore, TokenStore

OK = pb.DATABASE_OPERATION_STATUS_OK
NOT_FOUND = pb.DATABASE_OPERATION_STATUS_NOT_FOUND
MIN_TOKEN_CHARS = 40


@dataclass
class Served:
    """A TokenDatabaseService on loopback, its stub, and a way to read its store raw."""

    stub: token_database_pb2_grpc.TokenDatabaseServiceStub
    raw_contents: Any  # () -> str: everything the store holds, as text


@pytest.fixture(params=["sqlite", "dynamodb"])
def token_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TokenStore, Any]]:
    if request.param == "sqlite":
        path = tmp_path / "tokens.sqlite3"
        sqlite_store = SqliteTokenStore(path)

        def sqlite_contents() -> str:
            return "".join(p.read_bytes().decode("latin-1")
                           for p in tmp_path.glob("tokens.sqlite3*"))

        yield sqlite_store, sqlite_contents
        sqlite_store.close()
    else:
        endpoint: str = request.getfixturevalue("moto_endpoint")
        client = aws_client("dynamodb", endpoint)
        table = f"tokens-{uuid.uuid4().hex[:12]}"
        create_token_table(client, table)

        def dynamodb_contents() -> str:
            return json.dumps(client.scan(TableName=table, ConsistentRead=True)["Items"])

        yield DynamoDbTokenStore(client, table), dynamodb_contents


@pytest.fixture
async def served(token_store: tuple[TokenStore, Any]) -> AsyncIterator[Served]:
    store, contents = token_store
    server = grpc.aio.server()
    token_database_pb2_grpc.add_TokenDatabaseServiceServicer_to_server(
        TokenDatabaseService(store, SystemClock()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(token_database_pb2_grpc.TokenDatabaseServiceStub(channel), contents)
    finally:
        await channel.close()
        await server.stop(0)


def _stamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


async def _create(served: Served, name: str = "alice", role: str = "developer",
                  expires_at: datetime | None = None) -> str:
    request = pb.CreateTokenRequest(name=name, role=role)
    if expires_at is not None:
        request.expires_at.CopyFrom(_stamp(expires_at))
    answer = await served.stub.CreateToken(request)
    assert answer.status == OK, answer.detail
    return str(answer.token_info.token)


async def _info(served: Served, token: str) -> pb.GetTokenInfoResponse:
    answer: pb.GetTokenInfoResponse = await served.stub.GetTokenInfo(
        pb.GetTokenInfoRequest(token=token))
    return answer


# --- CreateToken --------------------------------------------------------------------------
async def test_create_returns_a_long_random_token_with_name_and_role(served: Served) -> None:
    answers = [await served.stub.CreateToken(pb.CreateTokenRequest(name="alice", role=role))
               for role in ("admin", "developer", "guest")]

    tokens = [answer.token_info.token for answer in answers]
    assert [a.status for a in answers] == [OK] * 3
    assert [a.token_info.role for a in answers] == ["admin", "developer", "guest"]
    assert {a.token_info.name for a in answers} == {"alice"}
    assert all(a.token_info.created_at.seconds > 0 for a in answers)
    assert all(len(token) >= MIN_TOKEN_CHARS for token in tokens)
    assert len(set(tokens)) == 3
    # Long and random: no two tokens share much beyond their common prefix.
    assert len({token[-20:] for token in tokens}) == 3


@pytest.mark.parametrize(("name", "role", "says"), [
    ("alice", "superuser", "admin, developer, guest"), ("alice", "", "admin, developer, guest"),
    ("alice", "Admin", "admin, developer, guest"), ("", "developer", "name is required")])
async def test_create_with_a_bad_role_or_no_name_is_refused_and_makes_nothing(
        served: Served, name: str, role: str, says: str) -> None:
    answer = await served.stub.CreateToken(pb.CreateTokenRequest(name=name, role=role))

    assert answer.status != OK
    assert answer.token_info.token == ""
    assert says in answer.detail
    listing = await served.stub.GetTokenInfoList(empty_pb2.Empty())
    assert list(listing.token_list) == []


async def test_the_store_keeps_no_raw_token(served: Served) -> None:
    token = await _create(served)

    held = served.raw_contents()

    assert fingerprint(token) in held
    assert token not in held


# --- GetTokenInfo -------------------------------------------------------------------------
async def test_get_token_info_finds_a_token_with_its_name_role_and_expiry(served: Served) -> None:
    expires_at = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    token = await _create(served, "bob", "guest", expires_at)

    answer = await _info(served, token)

    assert answer.status == OK
    assert (answer.token_info.name, answer.token_info.role) == ("bob", "guest")
    assert answer.token_info.expires_at.ToDatetime(tzinfo=UTC) == expires_at


@pytest.mark.parametrize("unknown", ["mqc3_" + "x" * 43, "", "sha256:", "\u00e9\u2603"])
async def test_an_unknown_token_is_not_found(served: Served, unknown: str) -> None:
    await _create(served)

    answer = await _info(served, unknown)

    assert answer.status == NOT_FOUND
    assert answer.token_info.name == ""


async def test_a_sha256_reference_is_not_accepted_as_a_token(served: Served) -> None:
    token = await _create(served)

    answer = await _info(served, FINGERPRINT_PREFIX + fingerprint(token))
    bare = await _info(served, fingerprint(token))

    assert answer.status == NOT_FOUND
    assert bare.status == NOT_FOUND
    assert answer.token_info.role == ""


# --- GetTokenInfoList ---------------------------------------------------------------------
async def test_the_list_names_tokens_by_fingerprint_never_by_token(served: Served) -> None:
    alice = await _create(served, "alice", "developer")
    ada = await _create(served, "ada", "admin")

    listing = await served.stub.GetTokenInfoList(empty_pb2.Empty())

    assert listing.status == OK
    assert sorted((i.name, i.role, i.token) for i in listing.token_list) == sorted([
        ("alice", "developer", FINGERPRINT_PREFIX + fingerprint(alice)),
        ("ada", "admin", FINGERPRINT_PREFIX + fingerprint(ada)),
    ])
    wire = listing.SerializeToString()
    assert alice.encode() not in wire and ada.encode() not in wire


# --- RenewToken ---------------------------------------------------------------------------
@pytest.mark.parametrize("by", ["token", "reference"])
async def test_renew_changes_role_and_expiry(served: Served, by: str) -> None:
    token = await _create(served, "alice", "guest",
                          datetime.now(UTC) + timedelta(hours=1))
    later = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    named = token if by == "token" else FINGERPRINT_PREFIX + fingerprint(token)

    renewed = await served.stub.RenewToken(
        pb.RenewTokenRequest(token=named, role="developer", expires_at=_stamp(later)))
    seen = await _info(served, token)

    assert renewed.status == OK, renewed.detail
    assert seen.status == OK
    assert (seen.token_info.name, seen.token_info.role) == ("alice", "developer")
    assert seen.token_info.expires_at.ToDatetime(tzinfo=UTC) == later


async def test_renew_with_a_bad_role_or_an_unknown_token_is_refused(served: Served) -> None:
    token = await _create(served, "alice", "guest")

    bad_role = await served.stub.RenewToken(pb.RenewTokenRequest(token=token, role="root"))
    unknown = await served.stub.RenewToken(
        pb.RenewTokenRequest(token="mqc3_" + uuid.uuid4().hex, role="admin"))

    assert bad_role.status != OK
    assert unknown.status == NOT_FOUND
    assert (await _info(served, token)).token_info.role == "guest"


# --- DeleteToken --------------------------------------------------------------------------
@pytest.mark.parametrize("by", ["token", "reference"])
async def test_delete_removes_the_token(served: Served, by: str) -> None:
    token = await _create(served)
    kept = await _create(served, "bob", "developer")
    named = token if by == "token" else FINGERPRINT_PREFIX + fingerprint(token)

    deleted = await served.stub.DeleteToken(pb.DeleteTokenRequest(token=named))
    again = await served.stub.DeleteToken(pb.DeleteTokenRequest(token=named))

    assert deleted.status == OK
    assert again.status == NOT_FOUND
    assert (await _info(served, token)).status == NOT_FOUND
    assert (await _info(served, kept)).status == OK
    listing = await served.stub.GetTokenInfoList(empty_pb2.Empty())
    assert [i.name for i in listing.token_list] == ["bob"]


# --- the scheduler's cache ----------------------------------------------------------------
CACHE_TTL_S = 1.0


@dataclass
class Standalone:
    scheduler: Scheduler
    clients: Clients
    tokens: token_database_pb2_grpc.TokenDatabaseServiceStub


@pytest.fixture
async def standalone(tmp_path: Path) -> AsyncIterator[Standalone]:
    """A standalone scheduler whose token cache trusts an entry for one second."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    scheduler = Scheduler(local_config(
        data_dir, env={"SCHEDULER_TOKEN_CACHE_TTL_S": str(CACHE_TTL_S)}))
    await scheduler.start()
    clients = Clients(scheduler.submission_port, scheduler.execution_port)
    secret = load_or_create_secret(token_secret_path(data_dir))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{scheduler.token_database_port}",
                                        interceptors=[PresentCredential(secret)])
    try:
        yield Standalone(scheduler, clients,
                         token_database_pb2_grpc.TokenDatabaseServiceStub(channel))
    finally:
        await channel.close()
        await clients.close()
        await scheduler.stop(grace_s=0)


async def _service_status(stub: submission_pb2_grpc.SubmissionServiceStub, token: str,
                          backend: str = "emulator") -> spb.GetServiceStatusResponse:
    answer: spb.GetServiceStatusResponse = await stub.GetServiceStatus(
        spb.GetServiceStatusRequest(token=token, backend=backend))
    return answer


async def _sleep_until(monotonic_s: float) -> None:
    await asyncio.sleep(max(0.0, monotonic_s - time.monotonic()))


async def test_a_deleted_token_works_until_the_cache_ttl_then_is_refused(
        standalone: Standalone) -> None:
    created = await standalone.tokens.CreateToken(
        pb.CreateTokenRequest(name="alice", role="developer"))
    token = created.token_info.token
    looked_up_before = time.monotonic()
    assert (await _service_status(standalone.clients.submission, token)).error.code == ""

    deleted = await standalone.tokens.DeleteToken(pb.DeleteTokenRequest(token=token))
    cached = await _service_status(standalone.clients.submission, token)
    assert time.monotonic() - looked_up_before < CACHE_TTL_S, "too slow to see the cache"
    await _sleep_until(looked_up_before + CACHE_TTL_S + 0.2)
    after_ttl = await _service_status(standalone.clients.submission, token)
    submitted = await standalone.clients.submission.SubmitJob(submit_request(token))

    assert deleted.status == OK
    assert cached.error.code == ""
    assert after_ttl.error.code == "UNAUTHENTICATED"
    assert "not known" in after_ttl.error.description
    assert submitted.error.code == "UNAUTHENTICATED"
    assert standalone.scheduler.manager.live_jobs() == 0


async def test_a_renewed_role_takes_effect_within_the_cache_ttl(standalone: Standalone) -> None:
    created = await standalone.tokens.CreateToken(
        pb.CreateTokenRequest(name="dave", role="developer"))
    token = created.token_info.token
    looked_up_before = time.monotonic()
    as_developer = await _service_status(standalone.clients.submission, token, "qpu")

    renewed = await standalone.tokens.RenewToken(pb.RenewTokenRequest(token=token, role="guest"))
    await _sleep_until(looked_up_before + CACHE_TTL_S + 0.2)
    as_guest = await _service_status(standalone.clients.submission, token, "qpu")

    assert renewed.status == OK
    assert (as_developer.error.code, as_developer.status) == ("", spb.SERVICE_STATUS_MAINTENANCE)
    assert (as_guest.error.code, as_guest.status) == ("", spb.SERVICE_STATUS_UNAVAILABLE)


async def test_with_the_token_database_down_cached_tokens_work_and_others_are_unavailable(
        aws_names: AwsNames, token_database: TokenDatabase) -> None:
    ttl_s = 2.0
    scheduler = Scheduler(aws_config(aws_names, token_database.address,
                                     env={"SCHEDULER_TOKEN_CACHE_TTL_S": str(ttl_s)}))
    await scheduler.start()
    clients = Clients(scheduler.submission_port, scheduler.execution_port)
    try:
        cached, uncached = (token_database.token("alice", "developer"),
                            token_database.token("bob", "developer"))
        looked_up_before = time.monotonic()
        assert (await _service_status(clients.submission, cached)).error.code == ""

        await token_database.stop()
        submitted = await clients.submission.SubmitJob(submit_request(cached))
        status = await clients.submission.GetJobStatus(
            spb.GetJobStatusRequest(token=cached, job_id=submitted.job_id))
        refused = [
            (await _service_status(clients.submission, uncached)).error,
            (await clients.submission.SubmitJob(submit_request(uncached))).error,
            (await clients.submission.CancelJob(
                spb.CancelJobRequest(token=uncached, job_id=submitted.job_id))).error,
        ]
        still_cached = time.monotonic() - looked_up_before < ttl_s
        await _sleep_until(looked_up_before + ttl_s + 0.2)
        entry_ended = await _service_status(clients.submission, cached)
        live = scheduler.manager.live_jobs()
    finally:
        await clients.close()
        await scheduler.stop(grace_s=0)

    assert still_cached, "too slow: the cached entry ended before the checks"
    assert submitted.error.code == "", submitted.error
    assert status.error.code == ""
    for error in refused:
        assert error.code == "UNAVAILABLE", error
        assert "token database cannot be reached" in error.description
    assert live == 1  # the uncached token's submission and cancel changed nothing
    assert entry_ended.error.code == "UNAVAILABLE"
    assert "token database cannot be reached" in entry_ended.error.description


# --- only the operator may reach the embedded token database ---------------------------------
async def test_a_local_user_without_the_credential_can_neither_mint_nor_list_tokens(
        standalone: Standalone) -> None:
    port = standalone.scheduler.token_database_port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stranger = token_database_pb2_grpc.TokenDatabaseServiceStub(channel)
        calls = [
            stranger.CreateToken(pb.CreateTokenRequest(name="mallory", role="admin")),
            stranger.GetTokenInfoList(empty_pb2.Empty()),
            stranger.RenewToken(pb.RenewTokenRequest(token="x", role="admin")),
            stranger.GetTokenInfo(pb.GetTokenInfoRequest(token="x")),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=[PresentCredential("a-guess")]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await token_database_pb2_grpc.TokenDatabaseServiceStub(channel).CreateToken(
                pb.CreateTokenRequest(name="mallory", role="admin"))
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    listed = await standalone.tokens.GetTokenInfoList(empty_pb2.Empty())
    assert "mallory" not in {t.name for t in listed.token_list}


async def test_the_data_directory_is_its_owners_alone(standalone: Standalone) -> None:
    config = standalone.scheduler.config
    assert config.local is not None
    data_dir = config.local.data_dir
    assert data_dir.stat().st_mode & 0o777 == 0o700
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"jobs.sqlite3", "tokens.sqlite3", "url-signing.key",
                                       "token-database.secret"}
    for path in files:
        assert path.stat().st_mode & 0o077 == 0, f"{path.name} is readable by others"


@pytest.mark.parametrize(("name", "says"), [
    ("", "required"), ("   ", "required"), ("eve\nINFO forged line", "printable"),
    ("x" * 129, "at most 128"), ("tab\there", "printable"),
])
async def test_a_token_name_that_would_forge_or_flood_logs_is_refused(
        standalone: Standalone, name: str, says: str) -> None:
    answer = await standalone.tokens.CreateToken(pb.CreateTokenRequest(name=name, role="guest"))
    assert answer.status != pb.DATABASE_OPERATION_STATUS_OK
    assert says in answer.detail
    assert not answer.token_info.token

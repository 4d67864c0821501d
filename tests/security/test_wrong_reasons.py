"""Answers that name the right reason (issue 26, point 6), over real gRPC: a token longer
than any real one is refused as not authenticated, without asking the token database;
failed store writes are not charged to the user's budget of unknown job ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from job_manager.stores import StoreError
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from pb.mqc3_cloud.token_database.v1 import token_database_pb2 as tdb_pb
from scheduler.messages.metadata import REASON_METADATA
from tests.conftest import scheduler_in
from tests.helpers import TokenDatabase, submit_request
from token_database.service import TokenDatabaseService

FIVE_MB = 5 * 2**20
MAX_TOKEN_CHARS = 4096  # the longest token looked up (scheduler/access/auth.py)


async def test_a_token_longer_than_any_real_one_is_unauthenticated_without_a_lookup(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[int] = []
    look_up = TokenDatabaseService.GetTokenInfo

    async def counted(self: Any, request: tdb_pb.GetTokenInfoRequest,
                      context: grpc.aio.ServicerContext) -> tdb_pb.GetTokenInfoResponse:
        lookups.append(len(request.token))
        return await look_up(self, request, context)

    monkeypatch.setattr(TokenDatabaseService, "GetTokenInfo", counted)
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        stub = running.clients.submission
        for length in (MAX_TOKEN_CHARS + 1, FIVE_MB):
            call = stub.GetServiceStatus(
                pb.GetServiceStatusRequest(token="t" * length, backend="emulator"), timeout=30)
            answer = await call
            assert answer.error.code == "UNAUTHENTICATED", answer.error
            assert answer.error.description.startswith(
                f"the token is longer than the {MAX_TOKEN_CHARS} characters"), answer.error
            assert (REASON_METADATA, "token_too_long") in tuple(await call.trailing_metadata())
        assert lookups == []
        # A token of the longest length allowed is still looked up (and is unknown).
        answer = await stub.GetServiceStatus(
            pb.GetServiceStatusRequest(token="t" * MAX_TOKEN_CHARS, backend="emulator"),
            timeout=30)
        assert answer.error.code == "UNAUTHENTICATED"
        assert lookups == [MAX_TOKEN_CHARS]


async def test_failed_store_writes_are_not_charged_as_lookups_of_unknown_jobs(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        stub = running.clients.submission
        token = running.token("alice", "developer")
        payloads: Any = running.scheduler.stack.payloads  # standalone: programs beside records
        store_new = payloads.create_with_input
        failures = 25  # far past the budget's burst of ten unknown ids

        async def disk_full(*args: Any, **kwargs: Any) -> None:
            nonlocal failures
            if failures:
                failures -= 1
                raise StoreError("database or disk is full (injected)")
            await store_new(*args, **kwargs)

        monkeypatch.setattr(payloads, "create_with_input", disk_full)
        for _ in range(failures):
            answer = await stub.SubmitJob(submit_request(token), timeout=10)
            assert answer.error.code == "INTERNAL", answer.error
            assert "reason=submission_not_stored" in answer.error.description
        # Room again: the next submission is accepted at once.
        answer = await stub.SubmitJob(submit_request(token), timeout=10)
        assert answer.error.code == "", answer.error
        assert answer.job_id

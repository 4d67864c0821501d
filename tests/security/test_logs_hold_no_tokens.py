"""Tokens never reach a log or a store.

A whole job life is played over real gRPC in each mode with every logger at DEBUG;
no captured record may contain a token that was used, nor a token's full SHA-256
fingerprint (logs name users by name and a short fingerprint). Then the job store
(and, standalone, the token file) is read column by column for the raw tokens.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import secrets
import sqlite3
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
import requests

from common.identity import fingerprint
from common.logs import configure_logging
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from scheduler.wiring.standalone import token_store_path
from tests.conftest import Running, scheduler_in
from tests.helpers import (
    UPLOAD_HEADERS,
    AwsNames,
    TokenDatabase,
    aws_client,
    submit_request,
)


def _everything_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger
    # Loggers with a level of their own (libraries quietened by configure_logging) too.
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            caplog.set_level(logging.DEBUG, logger=name)


async def _full_life(running: Running, alice: str, bob: str, guest: str, admin: str,
                     unknown: str) -> None:
    """Submit, watch, run, fetch, cancel, and be refused in the usual ways."""
    submission, execution = running.clients.submission, running.clients.execution

    submitted = await submission.SubmitJob(submit_request(alice),
                                           metadata=(("x-mqc3-idempotency-key", "first-try"),))
    assert submitted.error.code == "", submitted.error
    job_id = submitted.job_id
    queued = await submission.GetJobStatus(pb.GetJobStatusRequest(token=alice, job_id=job_id))
    assert queued.status == job_pb2.JOB_STATUS_QUEUED

    assigned = await running.clients.assign()
    assert assigned.job_id == job_id
    uploaded = await asyncio.to_thread(
        requests.put, assigned.upload_target.upload_url, data=gzip.compress(b"\x0a\x01r"),
        headers=UPLOAD_HEADERS, timeout=10)
    assert uploaded.status_code == 200
    refreshed = await execution.RefreshUploadUrl(
        execution_pb2.RefreshUploadUrlRequest(job_id=job_id))
    assert refreshed.error.code == ""
    reported = await execution.ReportExecutionResult(execution_pb2.ReportExecutionResultRequest(
        job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS))
    assert reported.error.code == ""
    result = await submission.GetJobResult(pb.GetJobResultRequest(token=alice, job_id=job_id))
    assert result.error.code == "" and result.result.result_url
    downloaded = await asyncio.to_thread(requests.get, result.result.result_url, timeout=10)
    assert downloaded.status_code == 200

    other = await submission.SubmitJob(submit_request(bob))
    assert other.error.code == ""
    cancelled = await submission.CancelJob(pb.CancelJobRequest(token=bob, job_id=other.job_id))
    assert cancelled.error.code == ""

    as_admin = await submission.GetJobStatus(pb.GetJobStatusRequest(token=admin, job_id=job_id))
    assert as_admin.error.code == ""
    as_guest = await submission.GetServiceStatus(
        pb.GetServiceStatusRequest(token=guest, backend="qpu"))
    assert as_guest.error.code == ""

    # Refused: another user's token, a mistyped token, a token nobody issued.
    not_theirs = await submission.GetJobResult(pb.GetJobResultRequest(token=bob, job_id=job_id))
    assert not_theirs.error.code == "NOT_FOUND"
    not_theirs_cancel = await submission.CancelJob(
        pb.CancelJobRequest(token=guest, job_id=job_id))
    assert not_theirs_cancel.error.code == "NOT_FOUND"
    mistyped = alice[:-1] + ("A" if alice[-1] != "A" else "B")
    for token in (mistyped, unknown):
        for answer in (
            await submission.SubmitJob(submit_request(token)),
            await submission.GetJobStatus(pb.GetJobStatusRequest(token=token, job_id=job_id)),
            await submission.CancelJob(pb.CancelJobRequest(token=token, job_id=job_id)),
        ):
            assert answer.error.code == "UNAUTHENTICATED", answer.error
    # A guest asking for more than a guest may: refused by the quota checks.
    too_large = await submission.SubmitJob(submit_request(guest, payload=b"\x01" * (1 << 20)))
    assert too_large.error.code == "INVALID_ARGUMENT"


# Libraries that log whole request bodies at DEBUG, and which configure_logging keeps at
# WARNING whatever SCHEDULER_LOG_LEVEL says. Their bodies hold the job store's
# owner_fingerprint, so they are exempt from the fingerprint check (never from the
# token check); test_request_body_loggers_stay_quiet_at_debug holds the exemption true.
BODY_LOGGERS = ("botocore", "boto3", "urllib3")


def _tokens(tokens: Iterable[str]) -> dict[str, str]:
    return {f"token #{index}": token for index, token in enumerate(tokens)}


def _fingerprints(tokens: Iterable[str]) -> dict[str, str]:
    return {f"full fingerprint of token #{index}": fingerprint(token)
            for index, token in enumerate(tokens)}


def _from_body_logger(record: logging.LogRecord) -> bool:
    return any(record.name == name or record.name.startswith(name + ".")
               for name in BODY_LOGGERS)


def _leaks(text: str, forbidden: dict[str, str]) -> list[str]:
    return [name for name, value in forbidden.items() if value in text]


def _sqlite_texts(path: Path) -> list[tuple[str, str]]:
    """(table.column, text) for every value of every table of a SQLite file."""
    texts: list[tuple[str, str]] = []
    with sqlite3.connect(path) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master "
                                                 "WHERE type = 'table'")]
        for table in tables:
            cursor = conn.execute(f'SELECT * FROM "{table}"')
            columns = [d[0] for d in cursor.description]
            for row in cursor:
                for column, value in zip(columns, row, strict=True):
                    text = (value.decode("latin-1") if isinstance(value, bytes)
                            else str(value))
                    texts.append((f"{table}.{column}", text))
    return texts


def _dynamodb_items(names: AwsNames) -> list[str]:
    client = aws_client("dynamodb", names.endpoint)
    items: list[str] = []
    for page in client.get_paginator("scan").paginate(TableName=names.table):
        items.extend(json.dumps(item) for item in page.get("Items", []))
    return items


async def test_no_log_record_and_no_stored_job_holds_a_token(
        mode: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase, caplog: pytest.LogCaptureFixture,
        audit_log: Path) -> None:
    _everything_at_debug(caplog)
    unknown = "mqc3_" + secrets.token_urlsafe(32)
    # Started inside the test body, so start-up and shut-down logs are captured too.
    async with scheduler_in(mode, tmp_path, request, token_database) as running:
        alice, bob = running.token("alice", "developer"), running.token("bob", "developer")
        guest, admin = running.token("gus", "guest"), running.token("ada", "admin")
        tokens = [alice, bob, guest, admin, unknown]
        await _full_life(running, alice, bob, guest, admin, unknown)
        if running.data_dir is not None:  # the files as they are on disk, WAL included
            raw_files = {path: path.read_bytes() for path in running.data_dir.rglob("*")
                         if path.is_file()}

    records = caplog.get_records("call")
    assert len(records) > 10, "the run logged next to nothing: is logging captured?"
    for record in records:
        message = record.getMessage()
        text = message + "\n" + caplog.handler.format(record)
        forbidden = _tokens(tokens)
        if not _from_body_logger(record):
            forbidden |= _fingerprints(tokens)
        leaked = _leaks(text, forbidden)
        assert not leaked, f"{leaked} in a {record.levelname} record of {record.name}: {message}"
    # Logs still say who did what: name and a short fingerprint.
    assert f"alice#{fingerprint(alice)[:8]}" in caplog.text
    # The audit stream names tokens by their whole fingerprint (docs/audit.md), never
    # by the token; it holds the admin's read of alice's job.
    audited = audit_log.read_text()
    assert f'"owner_fingerprint": "{fingerprint(alice)}"' in audited
    assert _leaks(audited, _tokens(tokens)) == []

    if running.data_dir is not None:
        for path, content in raw_files.items():
            leaked = _leaks(content.decode("latin-1"), _tokens(tokens))
            assert not leaked, f"{leaked} in {path.name}"
        for store in (running.data_dir / "jobs.sqlite3", token_store_path(running.data_dir)):
            texts = _sqlite_texts(store)
            assert texts, f"{store.name} holds nothing: the scan would prove nothing"
            for column, text in texts:
                for index, token in enumerate(tokens):
                    assert token not in text, f"token #{index} in {store.name} {column}"
    else:
        aws_names: AwsNames = request.getfixturevalue("aws_names")
        for column, text in _sqlite_texts(tmp_path / "tokens.sqlite3"):  # token_database's
            for index, token in enumerate(tokens):
                assert token not in text, f"token #{index} in the token database's {column}"
        items = _dynamodb_items(aws_names)
        jobs = [item for item in items if '"status"' in item]  # not key claims, not the lease
        assert len(jobs) == 2
        assert any(fingerprint(alice) in item for item in items)  # kept, as a fingerprint
        for item in items:
            for index, token in enumerate(tokens):
                assert token not in item, f"token #{index} in the DynamoDB job table"


async def test_a_token_sent_where_a_job_id_goes_is_not_logged(
        running: Running, caplog: pytest.LogCaptureFixture) -> None:
    # A user who pastes a token into the wrong field must not have it written down.
    _everything_at_debug(caplog)
    token = running.token()
    misplaced = "mqc3_" + secrets.token_urlsafe(32)

    answers = [
        await running.clients.submission.GetJobStatus(
            pb.GetJobStatusRequest(token=token, job_id=misplaced)),
        await running.clients.submission.SubmitJob(submit_request(token, misplaced)),
        await running.clients.execution.AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend=misplaced)),
        await running.clients.execution.ReportExecutionResult(
            execution_pb2.ReportExecutionResultRequest(
                job_id=str(uuid.uuid4()), status=execution_pb2.EXECUTION_STATUS_FAILURE,
                error={"code": "X", "description": misplaced})),
    ]

    assert all(answer.error.code for answer in answers)
    for record in caplog.get_records("call"):
        assert misplaced not in caplog.handler.format(record), record.getMessage()


def test_request_body_loggers_stay_quiet_at_debug() -> None:
    # The most verbose set-up an operator can choose still leaves out request bodies.
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved = {name: logging.getLogger(name).level for name in BODY_LOGGERS}
    try:
        configure_logging("DEBUG", "text")
        for name in BODY_LOGGERS:
            assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
            assert not logging.getLogger(name + ".endpoint").isEnabledFor(logging.DEBUG), name
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)

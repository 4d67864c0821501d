"""The audit stream (common/audit.py, docs/audit.md) holds exactly the administrative and
cross-user actions, names who did them by name and fingerprint, and never holds a token.

Driven as people drive it: a standalone scheduler over real gRPC and HTTP, the token
database as its own process (``python -m token_database serve``) over gRPC, and the
``scheduler.py tokens`` command line as a subprocess.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
import requests

from benchmarks.processes import free_ports
from common import audit
from common.identity import fingerprint
from common.logs import configure_logging
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from pb.mqc3_cloud.token_database.v1 import token_database_pb2 as tpb
from pb.mqc3_cloud.token_database.v1 import token_database_pb2_grpc
from pb.mqc3_scheduler.extension.v1 import jobs_pb2, jobs_pb2_grpc, reservations_pb2_grpc
from pb.mqc3_scheduler.extension.v1 import reservations_pb2 as rpb
from scheduler.messages import convert
from tests.conftest import Running, scheduler_in
from tests.helpers import UPLOAD_HEADERS, TokenDatabase, standalone_token, submit_request

ROOT = Path(__file__).resolve().parents[2]


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def what(path: Path) -> list[tuple[str, str, str, str]]:
    """Each entry's action, actor, result and code."""
    return [(e["action"], e["actor_name"], e["result"], e.get("code", ""))
            for e in entries(path)]


def _alice_and_root(running: Running) -> tuple[str, str]:
    """Tokens of the running standalone scheduler: alice, a developer, and root, an admin."""
    assert running.data_dir is not None
    return (standalone_token(running.data_dir, "alice", "developer"),
            standalone_token(running.data_dir, "root", "admin"))


async def _complete(running: Running, token: str) -> str:
    """A job of ``token``'s, run by a node to COMPLETED."""
    submitted = await running.clients.submission.SubmitJob(submit_request(token))
    assigned = await running.clients.assign()
    assert assigned.job_id == submitted.job_id
    uploaded = await asyncio.to_thread(
        requests.put, assigned.upload_target.upload_url, data=gzip.compress(b"\x0a\x01r"),
        headers=UPLOAD_HEADERS, timeout=10)
    assert uploaded.status_code == 200
    reported = await running.clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(
            job_id=submitted.job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS))
    assert reported.error.code == ""
    return submitted.job_id


async def test_an_admins_reads_and_cancels_of_anothers_jobs_and_downloads_are_audited(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        audit_log: Path) -> None:
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        alice, root = _alice_and_root(running)
        submission = running.clients.submission
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.submission_port}")
        jobs = jobs_pb2_grpc.JobsServiceStub(channel)
        done = await _complete(running, alice)
        queued = (await submission.SubmitJob(submit_request(alice))).job_id

        # The owner's own reads, listings and download: nothing.
        for job_id in (done, queued):
            await submission.GetJobStatus(pb.GetJobStatusRequest(token=alice, job_id=job_id))
        result = await submission.GetJobResult(pb.GetJobResultRequest(token=alice, job_id=done))
        await jobs.ListJobs(jobs_pb2.ListJobsRequest(token=alice))
        assert what(audit_log) == []
        url = result.result.result_url
        signature = parse_qs(urlsplit(url).query)["signature"][0]
        assert (await asyncio.to_thread(requests.get, url, timeout=10)).status_code == 200
        forged = url.replace(signature, "0" * len(signature))
        assert (await asyncio.to_thread(requests.get, forged, timeout=10)).status_code == 403

        # The admin's: each read, cancel, tagging and listing of someone else's.
        await submission.GetJobStatus(pb.GetJobStatusRequest(token=root, job_id=done))
        await submission.GetJobResult(pb.GetJobResultRequest(token=root, job_id=done))
        await jobs.SetJobTags(jobs_pb2.SetJobTagsRequest(
            token=root, job_id=done, tags=[jobs_pb2.Tag(key="k", value="v")]))
        # A watch reads the job at every poll, from before the cancel to after it.
        watch = jobs.WatchJob(jobs_pb2.WatchJobRequest(token=root, job_id=queued))
        assert (await watch.read()).status == job_pb2.JOB_STATUS_QUEUED
        cancelled = await submission.CancelJob(pb.CancelJobRequest(token=root, job_id=queued))
        assert cancelled.error.code == ""
        while (message := await watch.read()) is not grpc.aio.EOF:
            last = message.status
        assert last == job_pb2.JOB_STATUS_CANCELLED
        again = await submission.CancelJob(pb.CancelJobRequest(token=root, job_id=queued))
        assert again.error.code == "FAILED_PRECONDITION"
        await jobs.ListJobs(jobs_pb2.ListJobsRequest(token=root, owner_name="*"))
        # The admin's own job is not another's.
        own = (await submission.SubmitJob(submit_request(root))).job_id
        await submission.GetJobStatus(pb.GetJobStatusRequest(token=root, job_id=own))

        status = await submission.GetJobStatus(pb.GetJobStatusRequest(token=alice,
                                                                      job_id=queued))
        stored = await running.scheduler.stack.jobs.get(queued)
        await channel.close()

    assert what(audit_log) == [
        ("result.download", "signed URL", "ok", ""),
        ("result.download", "signed URL", "refused", "403"),
        ("job.status", "root", "ok", ""),
        ("job.result", "root", "ok", ""),
        ("job.set_tags", "root", "ok", ""),
        ("job.watch", "root", "ok", ""),
        ("job.cancel", "root", "ok", ""),
        ("job.cancel", "root", "refused", "FAILED_PRECONDITION"),
        ("jobs.list", "root", "ok", ""),
    ]
    logged = entries(audit_log)
    assert [e["job_id"] for e in logged[:8]] == [done, done, done, done, done,
                                                 queued, queued, queued]
    for entry in logged[2:]:
        assert (entry["actor_fingerprint"], entry["actor_role"]) == (fingerprint(root), "admin")
    # Each unary call's entry names its request id (made by the scheduler when none was
    # sent); a WatchJob stream has none (docs/errors.md).
    assert [bool(e.get("request_id")) for e in logged[2:]] == [True, True, True, False, True,
                                                               True, True]
    for entry in logged[2:8]:
        assert (entry["owner_name"], entry["owner_fingerprint"]) == ("alice", fingerprint(alice))
    assert logged[0]["address"] == "127.0.0.1"
    text = audit_log.read_text()
    for secret in (alice, root, signature):
        assert secret not in text
    # Who cancelled is stored by fingerprint and shown to the owner.
    assert stored is not None and stored.cancelled_by == fingerprint(root)
    assert status.status_detail == f"cancelled by root#{fingerprint(root)[:8]}"


async def test_an_admins_refused_tagging_of_anothers_job_is_audited_with_its_code(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        audit_log: Path) -> None:
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        alice, root = _alice_and_root(running)
        job_id = (await running.clients.submission.SubmitJob(submit_request(alice))).job_id
        # A newer scheduler's record (docs/records.md): served read-only, so tagging it is
        # refused after the job was found, which is what the audit must show.
        assert running.data_dir is not None
        with sqlite3.connect(running.data_dir / "jobs.sqlite3") as database:
            database.execute("UPDATE jobs SET record = json_set(record, '$.format_version', 99)"
                             " WHERE job_id = ?", (job_id,))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.submission_port}")
        jobs = jobs_pb2_grpc.JobsServiceStub(channel)
        tag = [jobs_pb2.Tag(key="k", value="v")]
        own = await jobs.SetJobTags(jobs_pb2.SetJobTagsRequest(token=alice, job_id=job_id,
                                                               tags=tag))
        refused = await jobs.SetJobTags(jobs_pb2.SetJobTagsRequest(token=root, job_id=job_id,
                                                                   tags=tag))
        await channel.close()
    assert own.error.code == refused.error.code == "FAILED_PRECONDITION", (own, refused)
    # The owner's own refusal is not audited; the admin's is, with its code.
    assert what(audit_log) == [("job.set_tags", "root", "refused", "FAILED_PRECONDITION")]
    assert entries(audit_log)[0]["job_id"] == job_id


def test_the_audit_stream_takes_no_part_in_the_services_log(
        audit_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    kept = (root.handlers[:], root.level)
    configure_logging("ERROR", "json")  # the service's log: errors only, on stderr
    try:
        for index in range(50):
            audit.record(audit.Actor("root", "admin", "f" * 64), "job.status",
                         job_id=str(index))
    finally:
        root.handlers[:], root.level = kept
    # Every entry in the audit stream, whatever the log's level; none in the log.
    assert [e["job_id"] for e in entries(audit_log)] == [str(i) for i in range(50)]
    assert audit.LOGGER_NAME not in capsys.readouterr().err
    assert audit_log.stat().st_mode & 0o777 == 0o600  # the operator's to read


# --- the token database: its own process, and the command line ----------------------------

@pytest.fixture
def token_database_process(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``python -m token_database serve`` with its audit stream in a file."""
    (port,) = free_ports(1)
    audit_path = tmp_path / "token-audit.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "token_database", "serve", "--sqlite",
         str(tmp_path / "tokens.sqlite3"), "--port", str(port)],
        cwd=ROOT, env={**os.environ, audit.DESTINATION_VARIABLE: str(audit_path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"127.0.0.1:{port}", audit_path
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_token_changes_through_the_token_database_service_are_audited(
        token_database_process: tuple[str, Path]) -> None:
    address, audit_path = token_database_process
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = token_database_pb2_grpc.TokenDatabaseServiceStub(channel)
        made = stub.CreateToken(tpb.CreateTokenRequest(name="alice", role="developer"))
        token = made.token_info.token
        stub.RenewToken(tpb.RenewTokenRequest(token=token))
        stub.RenewToken(tpb.RenewTokenRequest(token=token, role="admin"))
        stub.CreateToken(tpb.CreateTokenRequest(name="", role="developer"))
        stub.DeleteToken(tpb.DeleteTokenRequest(token=token))
        stub.DeleteToken(tpb.DeleteTokenRequest(token=token))
    deadline = time.monotonic() + 10  # the process writes each line as it answers
    while len(audit_path.read_text().splitlines()) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert what(audit_path) == [
        ("token.create", "operator", "ok", ""),
        ("token.renew", "operator", "ok", ""),
        ("token.role_change", "operator", "ok", ""),
        ("token.create", "operator", "refused", "INVALID_ARGUMENT"),
        ("token.delete", "operator", "ok", ""),
        ("token.delete", "operator", "refused", "NOT_FOUND"),
    ]
    logged = entries(audit_path)
    assert logged[2]["previous_role"] == "developer" and logged[2]["token_role"] == "admin"
    assert {e.get("token_fingerprint") for e in logged} == {fingerprint(token), None}
    assert all(e["address"].startswith("ipv4:127.0.0.1:") for e in logged)
    assert token not in audit_path.read_text()


def _tokens(data_dir: Path, audit_path: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scheduler.py"), "tokens", "--data-dir", str(data_dir),
         *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={**os.environ, audit.DESTINATION_VARIABLE: str(audit_path)})
    return done.stdout.strip()


def test_token_changes_through_the_command_line_are_audited(tmp_path: Path) -> None:
    data_dir, audit_path = tmp_path / "data", tmp_path / "audit.jsonl"
    token = _tokens(data_dir, audit_path, "create", "--name", "bob", "--role", "guest")
    reference = f"sha256:{fingerprint(token)}"
    _tokens(data_dir, audit_path, "renew", reference, "--expires-in-days", "7")
    _tokens(data_dir, audit_path, "renew", token, "--role", "developer")
    listed = _tokens(data_dir, audit_path, "list")
    assert listed.startswith(f"bob\tdeveloper\t{reference}\texpires 20")  # renewed: 7 days
    _tokens(data_dir, audit_path, "delete", reference)
    _tokens(data_dir, audit_path, "delete", reference)
    logged = entries(audit_path)
    assert [(e["action"], e["actor_role"], e["result"], e.get("code", "")) for e in logged] == [
        ("token.create", "operator", "ok", ""),
        ("token.renew", "operator", "ok", ""),
        ("token.role_change", "operator", "ok", ""),
        ("token.delete", "operator", "ok", ""),
        ("token.delete", "operator", "refused", "NOT_FOUND"),
    ]
    assert {e["token_fingerprint"] for e in logged} == {fingerprint(token)}
    assert all(e["actor_name"] and e["address"] == "local" for e in logged)
    assert token not in audit_path.read_text()
    assert logging.getLogger(audit.LOGGER_NAME).propagate is False


def test_a_token_made_by_the_token_databases_own_command_line_is_audited(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.jsonl"
    made = subprocess.run(
        [sys.executable, "-m", "token_database", "create", "--sqlite",
         str(tmp_path / "tokens.sqlite3"), "--name", "carol", "--role", "admin",
         "--audit-log", str(audit_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=True)
    token = made.stdout.strip()
    logged = entries(audit_path)
    assert [(e["action"], e["actor_role"], e["result"]) for e in logged] == [
        ("token.create", "operator", "ok")]
    assert (logged[0]["token_fingerprint"], logged[0]["token_role"]) == (fingerprint(token),
                                                                          "admin")
    assert token not in audit_path.read_text() + made.stderr


async def test_bookings_and_an_admins_end_of_anothers_session_are_audited(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        audit_log: Path) -> None:
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        alice, root = _alice_and_root(running)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.submission_port}")
        stub = reservations_pb2_grpc.ReservationsServiceStub(channel)
        own = await stub.OpenSession(rpb.OpenSessionRequest(token=alice, backend="emulator"))
        closed = await stub.CloseSession(rpb.CloseSessionRequest(
            token=alice, session_id=own.session.session_id))  # her own: not audited
        other = await stub.OpenSession(rpb.OpenSessionRequest(token=alice, backend="emulator"))
        ended = await stub.CloseSession(rpb.CloseSessionRequest(
            token=root, session_id=other.session.session_id))
        book = rpb.BookBackendRequest(token=root, backend="emulator", maintenance=True)
        now = datetime.now(UTC)
        book.starts_at.CopyFrom(convert.timestamp(now + timedelta(hours=1)))
        book.ends_at.CopyFrom(convert.timestamp(now + timedelta(hours=2)))
        booked = await stub.BookBackend(book)
        cancelled = await stub.CancelBooking(rpb.CancelBookingRequest(
            token=root, booking_id=booked.booking.booking_id))
        await channel.close()
    assert not [a.error.code for a in (own, closed, other, ended, booked, cancelled)
                if a.error.code]
    assert what(audit_log) == [("session.end", "root", "ok", ""),
                               ("booking.add", "root", "ok", ""),
                               ("booking.cancel", "root", "ok", "")]
    assert entries(audit_log)[0]["owner_name"] == "alice"
    assert entries(audit_log)[1]["booking_id"] == booked.booking.booking_id

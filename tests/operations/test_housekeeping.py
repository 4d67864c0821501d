"""The standalone data directory does not grow for ever, and a filling disk is told early."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from common.clock import SystemClock
from job_manager.model import JobStatus
from job_manager.stores.local_payload_store import SqliteInputsPayloadStore
from job_manager.stores.payload_store import input_key, result_key
from job_manager.stores.sqlite_job_store import SqliteJobStore
from job_manager.stores.url_signer import UrlSigner
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from scheduler.operations.housekeeping import ALREADY_RUN, Housekeeping, Retention
from tests.conftest import Running, scheduler_in
from tests.contract.test_job_store_contract import record
from tests.helpers import UPLOAD_HEADERS, TokenDatabase, submit_request
from tests.operations.support import healthz, scrape, value

OLD_S = 3600.0  # older than the sweep's grace for files of work in flight


def _aged(path: Path, content: bytes = b"x", age_s: float = OLD_S) -> Path:
    path.write_bytes(content)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


async def test_files_no_record_names_and_crash_leftovers_are_removed(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        caplog: pytest.LogCaptureFixture) -> None:
    payloads = tmp_path / "data" / "payloads"
    payloads.mkdir(parents=True)
    orphan = _aged(payloads / f"{uuid.uuid4()}.in.proto")
    orphan_result = _aged(payloads / f"{uuid.uuid4()}.out.proto.gz")
    leftover = _aged(payloads / f".{uuid.uuid4()}.out.proto.gz.123.4.tmp")
    young = payloads / f"{uuid.uuid4()}.in.proto"  # a submission may be writing it now
    young.write_bytes(b"y")
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        token = running.token()
        job_id = (await running.clients.submission.SubmitJob(submit_request(token))).job_id
        kept = _aged(payloads / f"{job_id}.in.proto", b"an older version's copy")
        housekeeping = running.scheduler.stack.housekeeping
        assert housekeeping is not None
        await housekeeping.sweep()
        assert not orphan.exists() and not orphan_result.exists() and not leftover.exists()
        assert young.exists() and kept.exists()
        assigned = await running.clients.assign()
        assert assigned.job_id == job_id
        assert assigned.job.program == submit_request(token).job.program  # from the database
    messages = [r.getMessage() for r in caplog.records]
    # At start the database names no job: files it does not name may be a restore's.
    assert any(m.startswith("kept 2 payload files of 2 jobs") and "2 of them are newer" in m
               for m in messages), messages
    # Once it names a job submitted after them, they are a crash's leftovers.
    assert any(m.startswith("removed 2 payload files of 2 jobs") for m in messages), messages


async def test_finished_jobs_past_the_retention_period_are_removed_with_their_files(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase) -> None:
    env = {"SCHEDULER_RETENTION_DAYS": str(0.5 / 86_400)}  # half a second
    async with scheduler_in("standalone", tmp_path, request, token_database, env) as running:
        token = running.token()
        submission = running.clients.submission
        old = (await submission.SubmitJob(submit_request(token))).job_id
        assert (await submission.CancelJob(pb.CancelJobRequest(token=token, job_id=old))
                ).error.code == ""
        await asyncio.sleep(0.6)
        live = (await submission.SubmitJob(submit_request(token))).job_id
        housekeeping = running.scheduler.stack.housekeeping
        assert housekeeping is not None
        await housekeeping.sweep()
        stack = running.scheduler.stack
        assert stack is not None and running.data_dir is not None
        assert await stack.jobs.get(old) is None
        assert await stack.jobs.get(live) is not None
        assert await stack.payloads.get_input(old) is None
        assert await stack.payloads.get_input(live) is not None


async def test_a_filling_disk_is_reported_before_it_stops_submissions(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase) -> None:
    env = {"SCHEDULER_MIN_FREE_BYTES": str(10**18)}  # more than any disk has: "low" now
    async with scheduler_in("standalone", tmp_path, request, token_database, env) as running:
        housekeeping = running.scheduler.stack.housekeeping
        assert housekeeping is not None
        await housekeeping.measure()
        status, text = await healthz(running.scheduler.metrics_port)
        assert status == 200 and text.startswith("SERVING\n")  # still serving: a warning
        assert "MB free" in text
        samples = await scrape(running.scheduler.metrics_port)
        assert value(samples, "mqc3_data_dir_free_bytes") > 0


# --- restoring a data directory (docs/design.md, "Restoring a standalone data directory") --
def _stores(data_dir: Path) -> tuple[SqliteJobStore, SqliteInputsPayloadStore]:
    jobs = SqliteJobStore(data_dir / "jobs.sqlite3")
    payloads = SqliteInputsPayloadStore(data_dir / "payloads", UrlSigner(b"k" * 32),
                                        "http://127.0.0.1:9", SystemClock(), jobs)
    return jobs, payloads


async def test_the_sweep_keeps_every_unnamed_file_while_one_is_newer_than_every_record(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    jobs, payloads = _stores(tmp_path)
    housekeeping = Housekeeping(tmp_path, jobs, payloads, SystemClock(), Retention(grace_s=0))
    try:
        await jobs.create(record(submitted_at=datetime.now(UTC) - timedelta(hours=2)))
        before = _aged(payloads.directory / f"{uuid.uuid4()}.out.proto.gz", age_s=3 * 3600)
        after = _aged(payloads.directory / f"{uuid.uuid4()}.out.proto.gz", age_s=3600)
        await housekeeping.sweep()
        assert before.exists() and after.exists()
        assert any(r.getMessage().startswith("kept 2 payload files of 2 jobs that no job "
                                             "record names: 1 of them are newer than the "
                                             "newest job record") for r in caplog.records)
        after.rename(tmp_path / after.name)  # the operator moves the restore's file away
        await housekeeping.sweep()
        assert not before.exists()
    finally:
        await payloads.close()
        await jobs.close()


async def test_a_restored_job_database_does_not_run_again_what_already_ran(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        caplog: pytest.LogCaptureFixture) -> None:
    data_dir, copy = tmp_path / "data", tmp_path / "copy"
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        token = running.token()
        ran, waits = [(await running.clients.submission.SubmitJob(submit_request(token))).job_id
                      for _ in range(2)]
    copy.mkdir()
    for path in data_dir.glob("jobs.sqlite3*"):  # the copy an operator keeps
        shutil.copy2(path, copy / path.name)
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        await _run(running, ran)
        later = (await running.clients.submission.SubmitJob(submit_request(token))).job_id
        assert (await running.clients.assign()).job_id == waits
        await _run(running, later)
    for path in data_dir.glob("jobs.sqlite3*"):  # the restore
        path.unlink()
    for path in copy.iterdir():
        shutil.copy2(path, data_dir / path.name)

    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        statuses = {job_id: await running.clients.submission.GetJobStatus(
            pb.GetJobStatusRequest(token=token, job_id=job_id)) for job_id in (ran, waits)}
        assert job_pb2.JobStatus.Name(statuses[ran].status) == "JOB_STATUS_FAILED"
        assert statuses[ran].status_detail == ALREADY_RUN
        assert job_pb2.JobStatus.Name(statuses[waits].status) == "JOB_STATUS_QUEUED"
        assert (await running.clients.assign()).job_id == waits  # never run: it runs
        assert (await running.clients.assign()).job_id == ""
        stack = running.scheduler.stack
        assert stack is not None and isinstance(stack.payloads, SqliteInputsPayloadStore)
        assert isinstance(stack.jobs, SqliteJobStore)
        sweeper = Housekeeping(data_dir, stack.jobs, stack.payloads, SystemClock(),
                               Retention(grace_s=0))
        await sweeper.sweep()  # the files of the job the copy does not name are newer
        assert (data_dir / "payloads" / result_key(later)).exists()
    assert any(f"job {ran} FAILED" in r.getMessage() for r in caplog.records)
    assert any(r.getMessage().startswith("kept 2 payload files of 1 jobs")
               for r in caplog.records)


async def _run(running: Running, job_id: str) -> None:
    """A node runs the job: takes it, uploads its result, reports success."""
    assigned = await running.clients.assign()
    assert assigned.job_id == job_id
    async with aiohttp.ClientSession(auto_decompress=False) as session, session.put(
            assigned.upload_target.upload_url, data=gzip.compress(b"\x0a\x01x"),
            headers=UPLOAD_HEADERS) as response:
        assert response.status == 200
    reported = await running.clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(
            job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS), timeout=10)
    assert reported.error.code == "", reported


async def test_an_older_data_directorys_program_files_are_still_served(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase) -> None:
    data_dir = tmp_path / "data"
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        token = running.token()
        job_id = (await running.clients.submission.SubmitJob(
            submit_request(token, payload=b"kept as a file"))).job_id
    # The layout of a version before programs moved into the database: no inputs table,
    # each program a {job_id}.in.proto file.
    with contextlib.closing(sqlite3.connect(data_dir / "jobs.sqlite3")) as conn:
        (program,) = conn.execute("SELECT program FROM inputs WHERE job_id = ?",
                                  (job_id,)).fetchone()
        conn.execute("DROP TABLE inputs")
        conn.commit()
    (data_dir / "payloads" / input_key(job_id)).write_bytes(program)
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        assigned = await running.clients.assign()
        assert assigned.job_id == job_id
        assert assigned.job.program == submit_request(token, payload=b"kept as a file").job.program


async def test_only_a_queued_job_never_handed_out_before_fails_for_its_existing_result(
        tmp_path: Path) -> None:
    jobs, payloads = _stores(tmp_path)
    housekeeping = Housekeeping(tmp_path, jobs, payloads, SystemClock(), Retention())
    try:
        ran, requeued, waiting = record(), record(requeues=1), record()
        for job in (ran, requeued, waiting):
            await payloads.create_with_input(job, b"program")
        for job in (ran, requeued):  # the requeued job's result is its lost node's
            (payloads.directory / result_key(job.job_id)).write_bytes(b"result")
        assert await housekeeping.fail_already_run() == 1
        failed = await jobs.get(ran.job_id)
        assert failed is not None and failed.status is JobStatus.FAILED
        assert failed.status_detail == ALREADY_RUN and failed.finished_at is not None
        for job in (requeued, waiting):
            assert await jobs.get(job.job_id) == job
    finally:
        await payloads.close()
        await jobs.close()

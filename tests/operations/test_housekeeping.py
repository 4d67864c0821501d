"""The standalone data directory does not grow for ever, and a filling disk is told early."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest

from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from tests.conftest import scheduler_in
from tests.helpers import TokenDatabase, submit_request
from tests.operations.support import healthz, scrape, value

OLD_S = 3600.0  # older than the sweep's grace for files of work in flight


def _aged(path: Path, content: bytes = b"x") -> Path:
    path.write_bytes(content)
    then = time.time() - OLD_S
    os.utime(path, (then, then))
    return path


async def test_files_no_record_names_and_crash_leftovers_are_removed_at_start(
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
        kept = _aged(payloads / f"{job_id}.in.proto", (payloads / f"{job_id}.in.proto")
                     .read_bytes())
        housekeeping = running.scheduler.stack.housekeeping
        assert housekeeping is not None
        await housekeeping.sweep()
        assert not orphan.exists() and not orphan_result.exists() and not leftover.exists()
        assert young.exists() and kept.exists()
        assert (await running.clients.assign()).job_id == job_id  # its program is intact
    assert any("2 payload files of 2 jobs" in r.getMessage() and "1 temporary" in r.getMessage()
               for r in caplog.records)


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
        assert not (running.data_dir / "payloads" / f"{old}.in.proto").exists()
        assert (running.data_dir / "payloads" / f"{live}.in.proto").exists()


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

"""Backends change while running, in both modes; --unify-backends shares one queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pb.mqc3_cloud.scheduler.v1 import submission_pb2
from scheduler.wiring.app import Scheduler
from tests.conftest import Running, scheduler_in
from tests.helpers import (
    TEST_BACKENDS_TOML,
    AwsNames,
    Clients,
    TokenDatabase,
    aws_client,
    local_config,
    submit_request,
)

FAST_RELOAD = {"SCHEDULER_BACKEND_RELOAD_S": "0.1"}
SIMULATOR = """
[backends.simulator.developer]
status = "available"
description = "new simulator"
"""
WITHOUT_QPU = TEST_BACKENDS_TOML.split("[backends.qpu.admin]")[0]


class Reloading:
    """A running scheduler and a way to replace its backend status text."""

    def __init__(self, running: Running, write: Callable[[str], None]) -> None:
        self.running = running
        self.write = write


@pytest.fixture
async def reloading(mode: str, tmp_path: Path, request: pytest.FixtureRequest,
                    token_database: TokenDatabase) -> AsyncIterator[Reloading]:
    async with scheduler_in(mode, tmp_path, request, token_database, FAST_RELOAD) as running:
        if running.data_dir is not None:
            backends_file = running.data_dir / "backends.toml"

            def write(text: str) -> None:
                backends_file.write_text(text)
        else:
            names: AwsNames = request.getfixturevalue("aws_names")
            ssm = aws_client("ssm", names.endpoint)

            def write(text: str) -> None:
                ssm.put_parameter(Name=names.backends_key, Value=text, Type="String",
                                  Overwrite=True)

        yield Reloading(running, write)


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the change was never picked up")


async def test_a_backend_added_while_running_takes_jobs(reloading: Reloading) -> None:
    running = reloading.running
    token = running.token()
    refused = await running.clients.submission.SubmitJob(submit_request(token, "simulator"))
    assert refused.error.code == "INVALID_ARGUMENT"
    reloading.write(TEST_BACKENDS_TOML + SIMULATOR)
    jobs = running.scheduler.manager
    await _until(lambda: jobs.knows_backend("simulator"))
    accepted = await running.clients.submission.SubmitJob(submit_request(token, "simulator"))
    assert accepted.error.code == "" and accepted.job_id
    assert (await running.clients.assign("simulator")).job_id == accepted.job_id


async def test_a_removed_backend_takes_no_jobs_but_keeps_its_queue(reloading: Reloading) -> None:
    running = reloading.running
    admin = running.token("root", "admin")
    queued = [(await running.clients.submission.SubmitJob(submit_request(admin, "qpu"))).job_id
              for _ in range(2)]
    reloading.write(WITHOUT_QPU)
    jobs = running.scheduler.manager
    await _until(lambda: not jobs.knows_backend("qpu"))
    refused = await running.clients.submission.SubmitJob(submit_request(admin, "qpu"))
    assert refused.error.code == "INVALID_ARGUMENT" and "qpu" in refused.error.description
    cancelled = await running.clients.submission.CancelJob(
        submission_pb2.CancelJobRequest(token=admin, job_id=queued[1]))
    assert cancelled.error.code == ""
    assert (await running.clients.assign("qpu")).job_id == queued[0]
    assert (await running.clients.assign("qpu")).job_id == ""


async def test_a_bad_status_text_keeps_the_last_good_one(reloading: Reloading) -> None:
    running = reloading.running
    reloading.write("[backends.emulator.developer]\nstatus = 'sleeping'\n")
    await asyncio.sleep(0.5)
    token = running.token()
    accepted = await running.clients.submission.SubmitJob(submit_request(token, "qpu"))
    assert accepted.error.code == "UNAVAILABLE"  # qpu is still in maintenance for developers
    assert "calibration" in accepted.error.description


async def test_unified_backends_share_one_queue(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    async with Scheduler(local_config(data_dir, "--unify-backends")) as scheduler:
        clients = Clients(scheduler.submission_port, scheduler.execution_port)
        try:
            running = Running(scheduler, clients, None, data_dir)
            admin = running.token("root", "admin")
            first = await clients.submission.SubmitJob(submit_request(admin, "qpu"))
            second = await clients.submission.SubmitJob(submit_request(admin, "emulator"))
            taken = [(await clients.assign("emulator")).job_id for _ in range(2)]
            assert sorted(taken) == sorted([first.job_id, second.job_id])
            status = await clients.submission.GetJobStatus(submission_pb2.GetJobStatusRequest(
                token=admin, job_id=first.job_id))
            assert status.error.code == ""
        finally:
            await clients.close()

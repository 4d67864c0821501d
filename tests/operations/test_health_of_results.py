"""Health says when results cannot be written (issue 26, point 6): uploads to a payloads
directory that refuses writes (read-only, or full) make health NOT_SERVING with the reason
on /healthz, answer 503 rather than 500, and health comes back once a write succeeds."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from job_manager.stores import local_payload_store
from tests.conftest import scheduler_in
from tests.helpers import UPLOAD_HEADERS, TokenDatabase, gzip_result, submit_request
from tests.operations.support import NOT_SERVING, SERVING, healthz, statuses, until


class _ReadOnly:
    """``os`` as the local payload store sees it, for a directory mounted read-only: every
    file it creates there is refused with EROFS, as the kernel refuses it."""

    def __init__(self, directory: Path) -> None:
        self._directory = str(directory)

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_CREAT and str(path).startswith(self._directory):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return os.open(path, flags, *args)


async def _upload(url: str) -> int:
    answer = await asyncio.to_thread(requests.put, url, data=gzip_result(b"result"),
                                     headers=UPLOAD_HEADERS, timeout=10)
    return answer.status_code


async def test_results_that_cannot_be_written_turn_health_not_serving_with_the_reason(
        tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
        token_database: TokenDatabase) -> None:
    env = {"SCHEDULER_STORE_UNHEALTHY_AFTER_S": "1"}
    async with scheduler_in("standalone", tmp_path, request, token_database, env) as running:
        scheduler = running.scheduler
        ports = (scheduler.submission_port, scheduler.execution_port)
        token = running.token()
        submitted = await running.clients.submission.SubmitJob(submit_request(token), timeout=10)
        assert submitted.error.code == ""
        assigned = await running.clients.assign()
        assert assigned.job_id == submitted.job_id
        assert running.data_dir is not None
        monkeypatch.setattr(local_payload_store, "os", _ReadOnly(running.data_dir / "payloads"))

        assert await _upload(assigned.upload_target.upload_url) == 503
        # Said at once (the store calls just made keep the health loop from probing yet),
        # and NOT_SERVING once it has lasted SCHEDULER_STORE_UNHEALTHY_AFTER_S.
        assert "failing: results writes" in (await healthz(scheduler.metrics_port))[1]
        await until(lambda: not scheduler.health.serving,
                    8, "health NOT_SERVING while results cannot be written")
        code, body = await healthz(scheduler.metrics_port)
        assert (code, body.splitlines()[0]) == (503, "NOT_SERVING"), body
        assert "failing: results writes" in body, body
        assert set((await statuses(ports)).values()) == {NOT_SERVING}

        monkeypatch.undo()  # writable again: the health loop's probe shows it
        await until(lambda: scheduler.health.serving, 8, "health SERVING once writes succeed")
        assert await healthz(scheduler.metrics_port) == (200, "SERVING\n")
        assert set((await statuses(ports)).values()) == {SERVING}
        assert await _upload(assigned.upload_target.upload_url) == 200

"""``scheduler.py jobs``, run as a person runs it: a subprocess against a running scheduler."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import Running
from tests.helpers import submit_request

ROOT = Path(__file__).resolve().parents[2]


async def jobs_command(running: Running, token: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "MQC3_CLIENT_TOKEN": token,
           "MQC3_CLIENT_URL": f"127.0.0.1:{running.scheduler.submission_port}"}
    if not token:
        del env["MQC3_CLIENT_TOKEN"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "scheduler.py"), "jobs", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("mode", ["standalone"])
async def test_list_show_cancel_usage_and_watch_print_what_the_scheduler_says(
        running: Running) -> None:
    alice = running.token("alice")
    submitted = await running.clients.submission.SubmitJob(
        submit_request(alice), metadata=(("x-mqc3-tags", "team=optics"),))
    job = submitted.job_id
    await running.clients.submission.SubmitJob(submit_request(running.token("bob")))

    # Reads run at once (each command is a Python start); the cancel comes after them.
    listed, show = await asyncio.gather(jobs_command(running, alice, "list"),
                                        jobs_command(running, alice, "--json", "show", job))
    code, out, _ = listed
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["JOB_ID", "STATUS", "BACKEND", "SUBMITTED_AT",
                                              "SHOTS", "TAGS"]
    assert len(lines) == 2 and lines[1].split()[:2] == [job, "QUEUED"]  # not bob's
    assert lines[1].split()[-2:] == ["100", "team=optics"]

    code, out, _ = show
    shown = json.loads(out)
    assert code == 0 and (shown["job_id"], shown["status"]) == (job, "QUEUED")

    code, out, _ = await jobs_command(running, alice, "cancel", job)
    assert code == 0 and "CANCELLED" in out
    # After the cancel, what each command reads or refuses does not depend on the others.
    watched, used, again, no_token = await asyncio.gather(
        jobs_command(running, alice, "--json", "watch", job),
        jobs_command(running, alice, "--json", "usage"),
        jobs_command(running, alice, "cancel", job),
        jobs_command(running, "", "list"))
    code, out, _ = watched
    assert code == 0 and [json.loads(line)["status"] for line in out.splitlines()] == [
        "CANCELLED"]

    code, out, _ = used
    usage = json.loads(out)
    assert code == 0 and (usage["owner"], usage["final"], usage["live_jobs"]) == (
        "alice", "CANCELLED=1", "0/" + usage["live_jobs"].split("/")[1])

    code, _, err = again
    assert code == 1 and "FAILED_PRECONDITION" in err
    code, _, err = no_token
    assert code == 2 and "MQC3_CLIENT_TOKEN" in err

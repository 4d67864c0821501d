"""Nodes (docs/nodes.md; docs/job-rules.md, rule 17): heartbeats of running jobs, whether
a backend's nodes still ask for work, and which node may speak for a job.

Driven on the JobManager over real stores with a fake clock (tests/unit/test_job_rules.py's
Harness); the watchdog is checked by hand after the clock moves.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import pytest

from backend_manager import ServiceStatus
from job_manager.manager import JobManager
from job_manager.model import JobStatus
from job_manager.stores import Fence
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, submission_pb2
from pb.mqc3_scheduler.extension.v1 import jobs_pb2, nodes_pb2
from scheduler.replication.forwarding import on_execution_port
from tests.helpers import refused_as
from tests.unit.test_job_rules import ALICE, GRACE_S, Harness, h, limits

__all__ = ["h"]

BEAT_TIMEOUT_S = 10.0
LONG_S = 600.0  # a job's own timeout (the harness's cap), far beyond every beat deadline


def beating(h: Harness, **settings: Any) -> JobManager:
    """The harness's manager, replaced by one with a short heartbeat timeout."""
    h.manager.shutdown()
    h.manager = h.new_manager(heartbeat_timeout_s=BEAT_TIMEOUT_S, **settings)
    return h.manager


async def taken(h: Harness, node: str = "lab-1", timeout_s: float = LONG_S) -> str:
    job_id = await h.submit(timeout_s=timeout_s)
    assignment = await h.manager.assign("emulator", node=node)
    assert assignment is not None and assignment.record.job_id == job_id
    return job_id


async def later(h: Harness, seconds: float) -> None:
    h.clock.advance(seconds)
    await h.manager.check_deadlines()


# --- heartbeats -------------------------------------------------------------------------
async def test_a_beating_nodes_job_outlives_the_heartbeat_timeout_and_completes(
        h: Harness) -> None:
    manager = beating(h)
    job_id = await taken(h)
    assert await manager.heartbeat(job_id, "lab-1") == BEAT_TIMEOUT_S
    for _ in range(6):  # 48 s, almost five heartbeat timeouts
        await later(h, 8)
        await manager.heartbeat(job_id, "lab-1")
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    assert (await h.complete(job_id, "lab-1")).status is JobStatus.COMPLETED


async def test_a_node_that_stops_beating_loses_its_job_long_before_its_timeout(
        h: Harness) -> None:
    manager = beating(h, max_requeues=1)
    job_id = await taken(h)
    await manager.heartbeat(job_id, "lab-1")
    await later(h, BEAT_TIMEOUT_S - 1)
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    await later(h, 2)
    stored = await h.stored(job_id)
    assert (stored.status, stored.requeues, stored.node_identity) == (JobStatus.QUEUED, 1, "")
    assert "stopped sending heartbeats" in stored.status_detail
    # The lost node is told to stop; the job goes to the next node that asks.
    await refused_as(manager.heartbeat(job_id, "lab-1"), "heartbeat_job_not_running",
                     job_id=job_id, status="QUEUED")
    assert (await h.assign()).record.job_id == job_id


async def test_with_no_requeue_left_a_silent_beater_ends_timeout_saying_why(
        h: Harness) -> None:
    manager = beating(h)
    job_id = await taken(h)
    await manager.heartbeat(job_id, "lab-1")
    await later(h, BEAT_TIMEOUT_S + 1)
    stored = await h.stored(job_id)
    assert stored.status is JobStatus.TIMEOUT
    assert "stopped sending heartbeats" in stored.status_detail
    assert manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0


async def test_a_later_beat_replaces_the_deadline_of_an_earlier_one(h: Harness) -> None:
    manager = beating(h)
    job_id = await taken(h)
    await manager.heartbeat(job_id, "lab-1")
    await later(h, 8)
    await manager.heartbeat(job_id, "lab-1")
    await later(h, 4)  # the first beat's deadline has passed, the second's has not
    assert (await h.stored(job_id)).status is JobStatus.RUNNING


async def test_a_node_that_never_beats_keeps_the_timeout_rule(h: Harness) -> None:
    beating(h)
    job_id = await taken(h, timeout_s=30)
    await later(h, 30 + GRACE_S - 1)  # many heartbeat timeouts, within timeout and grace
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    await later(h, 2)
    stored = await h.stored(job_id)
    assert stored.status is JobStatus.TIMEOUT
    assert "never reported" in stored.status_detail


async def test_beats_never_keep_a_job_past_its_own_timeout(h: Harness) -> None:
    manager = beating(h)
    job_id = await taken(h, timeout_s=30)
    for _ in range(12):  # 96 s of beats, past the timeout and its grace
        await manager.heartbeat(job_id, "lab-1")
        await later(h, 8)
    stored = await h.stored(job_id)
    assert stored.status is JobStatus.TIMEOUT
    assert "never reported" in stored.status_detail


async def test_a_deadline_beyond_every_date_is_none_yet_beats_still_watch_the_job(
        h: Harness) -> None:
    # docs/job-rules.md, rule 18: the wire allows any timeout (no cap by default); a job
    # whose deadline no date can hold is never timed out by it, here or after a restart.
    uncapped = replace(limits(), by_role={
        role: replace(each, max_timeout_s=None) for role, each in limits().by_role.items()})
    beating(h, limits=uncapped)
    job_id = await taken(h, timeout_s=3e11)
    await later(h, 10 * 365 * 86_400)  # ten years without a word
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    manager = await h.restart()
    await later(h, 10 * 365 * 86_400)
    assert (await h.stored(job_id)).status is JobStatus.RUNNING
    await manager.heartbeat(job_id, "lab-1")  # the restarted manager's 30 s
    await later(h, 31)
    stored = await h.stored(job_id)
    assert stored.status is JobStatus.TIMEOUT
    assert "stopped sending heartbeats" in stored.status_detail


async def test_a_beat_for_a_job_not_running_for_the_caller_is_refused(h: Harness) -> None:
    manager = beating(h)
    queued = await h.submit()
    await refused_as(manager.heartbeat(queued, "lab-1"), "heartbeat_job_not_running",
                     job_id=queued, status="QUEUED")
    assert (await manager.assign("emulator", node="lab-1")) is not None
    job_id = queued
    await refused_as(manager.heartbeat(job_id, "lab-2"), "job_held_by_another_node",
                     job_id=job_id)
    await h.complete(job_id, "lab-1")
    await refused_as(manager.heartbeat(job_id, "lab-1"), "heartbeat_job_not_running",
                     job_id=job_id, status="COMPLETED")
    await refused_as(manager.heartbeat("00000000-0000-4000-8000-00000000beef", "lab-1"),
                     "job_not_found", job_id="00000000-0000-4000-8000-00000000beef")


async def test_the_node_that_took_a_job_is_stored_and_logged(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    job_id = await taken(h, node="lab-7")
    assert (await h.stored(job_id)).node_identity == "lab-7"
    await h.complete(job_id, "lab-7")
    lines = [r.getMessage() for r in caplog.records if job_id in r.getMessage()]
    assert any("RUNNING" in line and "node=lab-7" in line for line in lines)
    assert any("COMPLETED" in line and "node=lab-7" in line for line in lines)


# --- is anyone polling a backend? --------------------------------------------------------
QUIET_S = 300.0


async def ticks(manager: JobManager, rounds: int = 2) -> None:
    """Let the watchdog's loop run ``rounds`` rounds (each checks the nodes), then stop it."""
    for _ in range(rounds):
        loop = asyncio.ensure_future(manager.watch_deadlines())
        for _ in range(3):
            await asyncio.sleep(0)
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


async def test_a_quiet_backend_is_noted_logged_once_and_measured_its_status_unchanged(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    manager = h.manager
    assert manager.service_status("emulator", ALICE) == (ServiceStatus.AVAILABLE, "")
    h.clock.advance(QUIET_S + 1)
    assert manager.service_status("emulator", ALICE) == (
        ServiceStatus.AVAILABLE, "no node has asked for work for 5 min")
    assert dict(manager.node_snapshot())["emulator"] == QUIET_S + 1
    caplog.set_level(logging.INFO)
    await ticks(manager)
    quiet = [r for r in caplog.records if "no node has asked for work" in r.getMessage()]
    assert [(r.levelno, "emulator" in r.getMessage()) for r in quiet
            if "emulator" in r.getMessage()] == [(logging.WARNING, True)]

    job_id = await h.submit()
    assert (await h.assign()).record.job_id == job_id  # a node asks again, and takes a job
    assert manager.service_status("emulator", ALICE) == (ServiceStatus.AVAILABLE, "")
    assert dict(manager.node_snapshot())["emulator"] == 0
    back = [r for r in caplog.records if "asks for work again" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in back] == [
        (logging.INFO, "backend emulator: a node asks for work again")]


async def test_a_node_in_a_long_poll_is_present_all_along(h: Harness) -> None:
    manager = h.manager
    waiting = asyncio.ensure_future(manager.assign("emulator", wait_s=QUIET_S * 10))
    await asyncio.sleep(0)
    h.clock.advance(QUIET_S * 2)
    assert dict(manager.node_snapshot())["emulator"] == 0
    assert manager.service_status("emulator", ALICE)[1] == ""
    job_id = await h.submit()
    assignment = await waiting
    assert assignment is not None and assignment.record.job_id == job_id


async def test_a_name_no_backend_has_is_not_remembered(h: Harness) -> None:
    # With one shared queue a node may ask under any name; only backends are watched.
    h.manager.shutdown()
    manager = h.manager = h.new_manager(unify_backends=True)
    waiting = asyncio.ensure_future(manager.assign("made-up", wait_s=QUIET_S * 10))
    await asyncio.sleep(0)
    h.clock.advance(QUIET_S)
    assert [backend for backend, _ in manager.node_snapshot()] == ["emulator", "qpu"]
    job_id = await h.submit()
    assignment = await waiting
    assert assignment is not None and assignment.record.job_id == job_id


async def test_a_follower_says_nothing_of_nodes_it_cannot_see(h: Harness) -> None:
    follower = h.new_manager(fence=Fence("me", 0))
    h.clock.advance(QUIET_S * 2)
    assert follower.service_status("emulator", ALICE) == (ServiceStatus.AVAILABLE, "")
    assert follower.node_snapshot() == []


# --- the road to the leader ---------------------------------------------------------------
def test_a_follower_passes_a_nodes_calls_to_the_leaders_execution_port() -> None:
    def paths(module: Any, service: str) -> list[str]:
        methods = module.DESCRIPTOR.services_by_name[service].methods
        return [f"/{module.DESCRIPTOR.package}.{service}/{method.name}" for method in methods]

    nodes = paths(execution_pb2, "ExecutionService") + paths(nodes_pb2, "NodeService")
    users = paths(submission_pb2, "SubmissionService") + paths(jobs_pb2, "JobsService")
    assert [path for path in nodes if not on_execution_port(path)] == []
    assert [path for path in users if on_execution_port(path)] == []

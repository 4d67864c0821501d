"""``scheduler.py sessions``, ``scheduler.py bookings`` and the budget in ``scheduler.py
jobs usage``, run as a person runs them: subprocesses against a running scheduler
(docs/reservations.md)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pb.mqc3_cloud.scheduler.v1 import execution_pb2
from scheduler.wiring.reservations_cli import parse_time
from tests.conftest import Running, scheduler_in
from tests.helpers import TokenDatabase, submit_request
from tests.operations.support import has_series, scrape, value

ROOT = Path(__file__).resolve().parents[2]


async def command(address: str, token: str, *args: str) -> tuple[int, str, str]:
    """``scheduler.py ARGS`` with the token and address in the environment, as a person
    sets them; (exit code, stdout, stderr)."""
    env = {**os.environ, "MQC3_CLIENT_TOKEN": token, "MQC3_CLIENT_URL": address}
    if not token:
        del env["MQC3_CLIENT_TOKEN"]
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "scheduler.py"), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def address_of(running: Running) -> str:
    return f"127.0.0.1:{running.scheduler.submission_port}"


def rows(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("mode", ["standalone"])
async def test_sessions_open_list_and_close(running: Running) -> None:
    where = address_of(running)
    alice, root = running.token("alice"), running.token("root", "admin")

    code, out, err = await command(where, alice, "sessions", "open", "emulator",
                                   "--max-length", "600", "--idle-timeout", "30")
    assert code == 0, err
    header, line = out.splitlines()
    assert header.split() == ["SESSION_ID", "BACKEND", "STATE", "OPENED_AT", "ENDS_BY",
                              "IDLE_TIMEOUT_S", "MAX_LENGTH_S"]
    session_id, backend, state, *_, idle, length = line.split()
    assert (backend, state, idle, length) == ("emulator", "open", "30.0", "600.0")

    # (Commands that change nothing run at once: each is a Python start.)
    second, too_long = await asyncio.gather(
        command(where, alice, "sessions", "open", "emulator"),
        command(where, alice, "sessions", "open", "emulator", "--max-length", "1e9"))
    # A second on the same backend is refused, its words printed; exit code 1.
    code, _, err = second
    assert code == 1 and "FAILED_PRECONDITION" in err and session_id in err
    # Past the role's limit: refused by the scheduler, naming the field.
    code, _, err = too_long
    assert code == 1 and "max_length_s" in err

    # Its first job handed over: the session has begun.
    submitted = await running.clients.submission.SubmitJob(submit_request(alice))
    assert submitted.error.code == ""
    taken = await running.clients.execution.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend="emulator"))
    assert taken.job_id == submitted.job_id
    for _ in range(50):  # the session is marked begun just after the hand-over
        code, out, _ = await command(where, alice, "sessions", "--json", "list")
        if rows(out)[0]["state"] == "begun":
            break
        await asyncio.sleep(0.1)
    listed = rows(out)
    assert code == 0 and [(s["session_id"], s["state"]) for s in listed] == [
        (session_id, "begun")]
    assert listed[0]["started_at"] and listed[0]["ends_by"]
    samples = await scrape(running.scheduler.metrics_port)  # the dashboard's view of it
    assert value(samples, "mqc3_session_holding", backend="emulator") == 1
    assert value(samples, "mqc3_sessions_open", backend="emulator") == 1

    # Everyone's is an admin's: another user is refused; the admin sees the owner.
    (code, _, err), (root_code, out, _) = await asyncio.gather(
        command(where, alice, "sessions", "list", "--all"),
        command(where, root, "sessions", "list", "--all"))
    assert code == 1 and "for admins only" in err
    assert root_code == 0 and out.splitlines()[0].split()[-1] == "OWNER"
    assert out.splitlines()[1].split()[-1] == "alice"

    code, out, _ = await command(where, alice, "sessions", "--json", "close", session_id)
    closed = rows(out)[0]
    assert code == 0 and (closed["state"], closed["end_reason"]) == (
        "ended", "closed by its owner")
    again, listed_after, unsent = await asyncio.gather(
        command(where, alice, "sessions", "close", session_id),
        command(where, alice, "sessions", "--json", "list"),
        command(where, alice, "sessions", "open", "emulator", "--idle-timeout", "0"))
    code, _, err = again
    assert code == 1 and "NOT_FOUND" in err
    code, out, _ = listed_after
    assert [s["state"] for s in rows(out)] == ["ended"]  # listed a day after its end
    samples = await scrape(running.scheduler.metrics_port)
    assert value(samples, "mqc3_session_holding", backend="emulator") == 0
    assert has_series(samples, "mqc3_session_holding", backend="emulator")

    code, _, err = unsent
    assert code == 2 and "above 0" in err  # a usage error, never sent


@pytest.mark.parametrize("mode", ["standalone"])
async def test_bookings_add_list_and_cancel(running: Running) -> None:
    where = address_of(running)
    root, alice, bob = (running.token("root", "admin"), running.token("alice"),
                        running.token("bob"))

    code, out, err = await command(where, root, "bookings", "--json", "add", "emulator",
                                   "--to", "+1h", "--user", "alice", "--note", "calibration run")
    assert code == 0, err
    booked = rows(out)[0]
    assert (booked["state"], booked["for"], booked["note"]) == (
        "open", "alice", "calibration run")
    starts_at = datetime.fromisoformat(booked["starts_at"])
    assert abs((datetime.fromisoformat(booked["ends_at"]) - starts_at)
               - timedelta(hours=1)) < timedelta(seconds=2)

    # An overlap is refused with the booking it meets; only an admin books. (Commands
    # that change nothing run at once: each is a Python start.)
    (code, _, err), (alices_code, _, alices_err) = await asyncio.gather(
        command(where, root, "bookings", "add", "emulator", "--from", "+30m", "--to", "+2h",
                "--maintenance"),
        command(where, alice, "bookings", "add", "emulator", "--from", "+2h", "--to", "+3h",
                "--maintenance"))
    assert code == 1 and "FAILED_PRECONDITION" in err and booked["booking_id"] in err
    assert alices_code == 1 and "for admins only" in alices_err
    later = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0, tzinfo=None)
    code, out, err = await command(
        where, root, "bookings", "--json", "add", "emulator", "--from", later.isoformat(),
        "--to", (later + timedelta(hours=2)).isoformat(), "--maintenance")
    assert code == 0, err
    maintenance = rows(out)[0]
    assert (maintenance["state"], maintenance["for"]) == ("upcoming", "maintenance")
    assert maintenance["starts_at"] == later.replace(tzinfo=UTC).isoformat()  # no offset: UTC

    samples = await scrape(running.scheduler.metrics_port)  # the dashboard's view of them
    assert value(samples, "mqc3_booking_open", backend="emulator", kind="user") == 1
    assert value(samples, "mqc3_booking_open", backend="emulator", kind="maintenance") == 0
    coming_s = value(samples, "mqc3_booking_next_start_seconds", backend="emulator",
                     kind="maintenance")
    assert timedelta(days=2) - timedelta(minutes=1) < timedelta(seconds=coming_s) <= timedelta(
        days=2)
    assert not has_series(samples, "mqc3_booking_next_start_seconds", kind="user")

    # Listed for anyone, the earliest first; whose only for an admin.
    bobs, alices, roots, nowhere = await asyncio.gather(
        command(where, bob, "bookings", "list"),
        command(where, alice, "bookings", "--json", "list"),
        command(where, root, "bookings", "list", "--backend", "emulator"),
        command(where, root, "bookings", "list", "--backend", "nowhere"))
    code, out, _ = bobs
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["BOOKING_ID", "BACKEND", "STATE", "STARTS_AT",
                                              "ENDS_AT", "FOR", "NOTE"]
    assert [line.split()[5] for line in lines[1:]] == ["others", "maintenance"]
    code, out, _ = alices
    assert [(b["for"], b["for_you"]) for b in rows(out)] == [
        ("you", True), ("maintenance", False)]
    code, out, _ = roots
    assert out.splitlines()[0].split()[-1] == "BOOKED_BY" and "alice" in out.splitlines()[1]
    code, out, _ = nowhere
    assert code == 0 and len(out.splitlines()) == 1  # the header alone

    code, out, _ = await command(where, root, "bookings", "--json", "cancel",
                                 booked["booking_id"])
    assert code == 0 and rows(out)[0]["state"] == "cancelled"
    (code, _, err), (_, out, _) = await asyncio.gather(
        command(where, root, "bookings", "cancel", booked["booking_id"]),
        command(where, alice, "bookings", "--json", "list", "--ended"))
    assert code == 1 and "NOT_FOUND" in err
    assert [b["booking_id"] for b in rows(out)] == [maintenance["booking_id"]]


@pytest.mark.parametrize("mode", ["standalone"])
async def test_bookings_refuse_what_is_not_a_booking_before_asking(running: Running) -> None:
    where, root = address_of(running), running.token("root", "admin")
    # Every one is refused (nothing changes): they run at once, each a Python start.
    neither, both, soon, too_late, backwards = await asyncio.gather(
        command(where, root, "bookings", "add", "emulator", "--to", "+1h"),
        command(where, root, "bookings", "add", "emulator", "--to", "+1h", "--user", "alice",
                "--maintenance"),
        command(where, root, "bookings", "add", "emulator", "--to", "soon", "--maintenance"),
        command(where, root, "bookings", "add", "emulator", "--to", "+99999999999d",
                "--maintenance"),
        command(where, root, "bookings", "add", "emulator", "--from", "+2h", "--to", "+1h",
                "--maintenance"))
    code, _, err = neither
    assert code == 2 and "--user" in err and "--maintenance" in err
    code, _, err = both
    assert code == 2 and "not allowed with" in err
    code, _, err = soon
    assert code == 2 and "'soon' is not a time" in err
    code, _, err = too_late
    assert code == 2 and "beyond the year 9999" in err
    # A window that ends before it starts is the scheduler's to refuse, in its words.
    code, _, err = backwards
    assert code == 1 and "must end after it starts" in err


async def test_the_commands_say_when_there_is_no_token_or_no_scheduler() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{unused.getsockname()[1]}"
    (code, _, err), (unanswered, _, why) = await asyncio.gather(
        command(nowhere, "", "sessions", "list"),
        command(nowhere, "some-token", "bookings", "list"))
    assert code == 2 and "MQC3_CLIENT_TOKEN" in err
    assert unanswered == 3 and nowhere in why and "UNAVAILABLE" in why


@pytest.mark.parametrize("mode", ["standalone"])
async def test_jobs_usage_shows_the_budget_left(
        mode: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase) -> None:
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[roles.developer]\nperiod = "day"\nshots = 150\nqpu_seconds = 600\n')
    async with scheduler_in(mode, tmp_path, request, token_database,
                            {"SCHEDULER_BUDGETS_FILE": str(budgets)}) as running:
        alice, root = running.token("alice"), running.token("root", "admin")
        assert (await running.clients.submission.SubmitJob(submit_request(alice))).job_id
        taken = await running.clients.execution.AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="emulator"))
        assert taken.job_id  # handed over: its 100 shots are used

        as_json, as_text, roots = await asyncio.gather(  # reads: at once
            command(address_of(running), alice, "jobs", "--json", "usage"),
            command(address_of(running), alice, "jobs", "usage"),
            command(address_of(running), root, "jobs", "--json", "usage"))
        code, out, err = as_json
        assert code == 0, err
        usage = rows(out)[0]
        assert usage["budget"] == "100/150 shots, 0.0/600 QPU s per day"
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).date()
        assert usage["budget_resets_at"] == f"{tomorrow.isoformat()}T00:00:00+00:00"
        code, out, _ = as_text
        assert code == 0 and "100/150 shots, 0.0/600 QPU s per day" in out
        # Admins have none unless one is set for them.
        code, out, _ = roots
        assert code == 0 and rows(out)[0]["budget"] == "-"


def test_times_are_iso_now_or_from_now() -> None:
    now = datetime(2027, 1, 5, 9, 0, tzinfo=UTC)
    assert parse_time("now", now) == now
    assert parse_time("+90m", now) == now + timedelta(minutes=90)
    assert parse_time("+1.5d", now) == now + timedelta(hours=36)
    assert parse_time("2027-01-06T10:00", now) == datetime(2027, 1, 6, 10, tzinfo=UTC)
    assert parse_time("2027-01-06T10:00+09:00", now) == datetime(2027, 1, 6, 1, tzinfo=UTC)
    assert parse_time("2027-01-06T10:00Z", now) == datetime(2027, 1, 6, 10, tzinfo=UTC)
    for wrong in ("", "tomorrow", "+2", "+-1h", "-1h"):
        with pytest.raises(ValueError):
            parse_time(wrong, now)


@pytest.mark.parametrize("mode", ["standalone"])
async def test_a_job_queued_again_spends_its_shots_once(
        mode: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase) -> None:
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[roles.developer]\nperiod = "day"\nshots = 250\n')
    async with scheduler_in(mode, tmp_path, request, token_database,
                            {"SCHEDULER_BUDGETS_FILE": str(budgets),
                             "SCHEDULER_MAX_REQUEUES": "1"}) as running:
        alice = running.token("alice")
        job_id = (await running.clients.submission.SubmitJob(submit_request(alice))).job_id
        assign = execution_pb2.AssignNextJobRequest(backend="emulator")
        assert (await running.clients.execution.AssignNextJob(assign)).job_id == job_id
        lost = execution_pb2.ReportExecutionResultRequest(
            job_id=job_id, status=execution_pb2.EXECUTION_STATUS_FAILURE)
        lost.error.code = "UNAVAILABLE"  # the backend's failure: the job is queued again
        assert (await running.clients.execution.ReportExecutionResult(lost)).error.code == ""
        assert (await running.clients.execution.AssignNextJob(assign)).job_id == job_id

        code, out, err = await command(address_of(running), alice, "jobs", "--json", "usage")
        assert code == 0, err
        assert rows(out)[0]["budget"] == "100/250 shots per day"  # one job of 100 shots

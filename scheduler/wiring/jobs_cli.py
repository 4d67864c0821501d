"""``scheduler.py jobs``: the command line for people, over gRPC to a running scheduler.

Speaks the extension (ListJobs, GetUsage, WatchJob) and the original (GetJobStatus,
CancelJob). The conventions every command for people shares live here too
(``client_parser``, ``run_client``; ``scheduler.py sessions`` and ``bookings`` use them,
scheduler/wiring/reservations_cli.py): the address comes from ``--address`` or
``MQC3_CLIENT_URL`` (default 127.0.0.1:8082), the token from ``MQC3_CLIENT_TOKEN``
(never a flag: a command line is visible to every local account); tables by default,
``--json`` for scripts. Exit codes: 0 done, 1 the scheduler refused (its ErrorDetail
printed), 2 a usage error, 3 the scheduler could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from pb.mqc3_cloud.scheduler.v1 import job_pb2, submission_pb2, submission_pb2_grpc
from pb.mqc3_scheduler.extension.v1 import jobs_pb2 as pb
from pb.mqc3_scheduler.extension.v1 import jobs_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:8082"
_STATUS_NAMES = {value: name.removeprefix("JOB_STATUS_")
                 for name, value in job_pb2.JobStatus.items()}
_STATUS_VALUES = {name: value for value, name in _STATUS_NAMES.items()}


class Refused(Exception):
    """The scheduler answered with an ErrorDetail."""


# What a command does over the channel, with the parsed arguments and the token.
ClientRun = Callable[[argparse.Namespace, grpc.aio.Channel, str], Awaitable[None]]


def client_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with the options every command for people takes."""
    parser = argparse.ArgumentParser(
        prog=prog, description=f"{description} (token from MQC3_CLIENT_TOKEN).")
    parser.add_argument("--address", default=None,
                        help=f"host:port of the submission port (default MQC3_CLIENT_URL or "
                             f"{DEFAULT_ADDRESS})")
    parser.add_argument("--json", action="store_true", help="JSON for scripts, not tables")
    return parser


def run_client(name: str, args: argparse.Namespace, run: ClientRun) -> int:
    """Run one command against the scheduler; its exit code (this module's docstring)."""
    token = os.environ.get("MQC3_CLIENT_TOKEN", "")
    if not token:
        print(f"scheduler {name}: set MQC3_CLIENT_TOKEN to your token", file=sys.stderr)
        return 2
    address = args.address or os.environ.get("MQC3_CLIENT_URL") or DEFAULT_ADDRESS

    async def connected() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            await run(args, channel, token)

    try:
        asyncio.run(connected())
    except Refused as exc:
        print(f"scheduler {name}: {exc}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as exc:
        print(f"scheduler {name}: {address}: {exc.code().name}: {exc.details()}",
              file=sys.stderr)
        return 3
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = client_parser("scheduler.py jobs", "Find, cancel, count and watch your jobs")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="your jobs, newest first")
    listing.add_argument("--status", action="append", default=[],
                         choices=[n for n in _STATUS_VALUES if n != "UNSPECIFIED"])
    listing.add_argument("--backend", default="")
    listing.add_argument("--tag", default="", help="key=value")
    listing.add_argument("--owner", default="", help="admins: one user's jobs ('*': all)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    for name in ("show", "cancel", "watch"):
        commands.add_parser(name).add_argument("job_id")
    usage = commands.add_parser(
        "usage", help="your jobs, shots and time of the last 30 days, and your budget left")
    usage.add_argument("--owner", default="", help="admins: one user's usage")
    usage.add_argument("--all-users", action="store_true", help="admins: everyone's")
    return parser


def jobs_main(argv: Sequence[str]) -> int:
    """Entry point of ``scheduler.py jobs``; returns the exit code."""
    return run_client("jobs", _parser().parse_args(list(argv)), _run)


async def _run(args: argparse.Namespace, channel: grpc.aio.Channel, token: str) -> None:
    jobs = jobs_pb2_grpc.JobsServiceStub(channel)
    original = submission_pb2_grpc.SubmissionServiceStub(channel)
    if args.command == "list":
        await _list(jobs, token, args)
    elif args.command == "show":
        answer = checked(await original.GetJobStatus(
            submission_pb2.GetJobStatusRequest(token=token, job_id=args.job_id)))
        print_rows(args, [_status_row(args.job_id, answer)], ["job_id", "status", "detail"])
    elif args.command == "cancel":
        checked(await original.CancelJob(
            submission_pb2.CancelJobRequest(token=token, job_id=args.job_id)))
        print_rows(args, [{"job_id": args.job_id, "status": "CANCELLED"}], ["job_id", "status"])
    elif args.command == "usage":
        await _usage(jobs, token, args)
    else:
        await _watch(jobs, token, args)


def checked(answer: Any) -> Any:
    """``answer``, unless it carries a refusal (then Refused, with its code and words)."""
    if answer.error.code:
        raise Refused(f"{answer.error.code}: {answer.error.description}")
    return answer


async def _list(jobs: jobs_pb2_grpc.JobsServiceStub, token: str,
                args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []
    page_token = ""
    while len(rows) < args.limit:
        answer = checked(await jobs.ListJobs(pb.ListJobsRequest(
            token=token, statuses=[_STATUS_VALUES[s] for s in args.status],
            backend=args.backend, tag=args.tag, owner_name=args.owner,
            page_size=min(max(args.limit - len(rows), 1), 500), page_token=page_token)))
        rows += [_job_row(entry) for entry in answer.jobs]
        page_token = answer.next_page_token
        if not page_token:
            break
    columns = ["job_id", "status", "backend", "submitted_at", "shots", "tags"]
    # An admin's listing (--owner) also names whose each job is and the node that took it.
    print_rows(args, rows[:args.limit], [*columns, "owner", "node"] if args.owner else columns)


async def _usage(jobs: jobs_pb2_grpc.JobsServiceStub, token: str,
                 args: argparse.Namespace) -> None:
    answer = checked(await jobs.GetUsage(pb.GetUsageRequest(
        token=token, owner_name=args.owner, all_users=args.all_users)))
    rows = [{
        "owner": usage.owner_name,
        "final": " ".join(f"{_STATUS_NAMES[c.status]}={c.jobs}"
                          for c in usage.jobs_by_final_status) or "-",
        "shots": usage.total_shots,
        "queue_wait_s": round(usage.queue_wait_seconds, 3),
        "execution_s": round(usage.execution_seconds, 3),
        "live_jobs": f"{usage.live_jobs}/{usage.max_live_jobs}",
        "queued_bytes": f"{usage.queued_bytes}/{usage.max_queued_bytes}",
        **_budget_columns(usage),
    } for usage in answer.usage]
    print_rows(args, rows, list(rows[0]) if rows else ["owner"])


def _budget_columns(usage: pb.Usage) -> dict[str, str]:
    """The budget of this period as used/budget, and when it resets; "-" when none applies
    (docs/reservations.md, "Budgets")."""
    if not usage.HasField("budget"):
        return {"budget": "-", "budget_resets_at": "-"}
    budget = usage.budget
    spent = []
    if budget.HasField("shots"):
        spent.append(f"{budget.shots_used}/{budget.shots} shots")
    if budget.HasField("qpu_seconds"):
        spent.append(f"{budget.qpu_seconds_used:.1f}/{budget.qpu_seconds:g} QPU s")
    return {"budget": f"{', '.join(spent)} per {budget.period}",
            "budget_resets_at": time_text(budget.resets_at)}


async def _watch(jobs: jobs_pb2_grpc.JobsServiceStub, token: str,
                 args: argparse.Namespace) -> None:
    async for message in jobs.WatchJob(pb.WatchJobRequest(token=token, job_id=args.job_id)):
        checked(message)
        row = {"observed_at": time_text(message.observed_at), "status":
               _STATUS_NAMES[message.status], "detail": message.status_detail}
        print_rows(args, [row], list(row), header=False)
        sys.stdout.flush()


def _job_row(entry: pb.JobSummary) -> dict[str, Any]:
    return {"job_id": entry.job_id, "status": _STATUS_NAMES[entry.status],
            "backend": entry.backend, "submitted_at": time_text(entry.submitted_at),
            "shots": entry.n_shots, "owner": entry.owner_name, "node": entry.node_identity,
            "tags": ",".join(f"{t.key}={t.value}" for t in entry.tags),
            "finished_at": time_text(entry.finished_at) if entry.HasField("finished_at") else ""}


def _status_row(job_id: str, answer: submission_pb2.GetJobStatusResponse) -> dict[str, Any]:
    row: dict[str, Any] = {"job_id": job_id, "status": _STATUS_NAMES[answer.status],
                           "detail": answer.status_detail}
    row.update(_timestamps(answer.execution_details.timestamps))
    return row


def _timestamps(stamps: Message) -> dict[str, str]:
    return {name: value for name, value in MessageToDict(stamps).items()}


def time_text(stamp: Any) -> str:
    """A Timestamp as ISO 8601 in UTC, to the second."""
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="seconds")


def print_rows(args: argparse.Namespace, rows: list[dict[str, Any]], columns: list[str],
               header: bool = True) -> None:
    """``rows`` as a table of ``columns``, or (``--json``) one object per row and line."""
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return
    widths = {c: max([len(c), *(len(str(row.get(c, ""))) for row in rows)]) for c in columns}
    if header:
        print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())

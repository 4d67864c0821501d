"""The command line: serve (the default), manage the standalone mode's tokens, migrate the
table, or, over gRPC to a running scheduler, a person's view of their jobs (``jobs``,
scheduler/wiring/jobs_cli.py) and of sessions and bookings (``sessions``, ``bookings``,
scheduler/wiring/reservations_cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Sequence

from backend_manager import BackendConfigError
from common import audit
from common.clock import SystemClock
from common.identity import Role
from common.logs import configure_logging
from common.private_files import NotPrivate
from job_manager.stores import StoreError
from job_manager.stores.dynamodb_job_store import (
    MONTH,
    OWNER_INDEX,
    TIME_INDEX,
    DynamoDbJobStore,
)
from scheduler.wiring.app import Scheduler
from scheduler.wiring.aws import aws_job_store
from scheduler.wiring.config import AwsConfig, Config, ConfigError, audit_log, load_config
from scheduler.wiring.jobs_cli import jobs_main
from scheduler.wiring.reservations_cli import bookings_main, sessions_main
from scheduler.wiring.standalone import open_data_directory, token_store_path
from token_database.service import (
    audit_created,
    audit_renewed,
    create_token,
    expires_in,
    name_problem,
    renewed,
)
from token_database.store import FINGERPRINT_PREFIX, SqliteTokenStore, token_key

log = logging.getLogger("scheduler")


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then drain within the grace period."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting at once", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: draining", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    scheduler = Scheduler(config)
    try:
        await scheduler.start()
        await stop.wait()
    finally:
        await scheduler.stop()


def _tokens_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="scheduler.py tokens", description="Manage the standalone mode's tokens."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("mqc3-data"),
        help="the standalone data directory (default ./mqc3-data)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a token and print it (shown only once)")
    create.add_argument("--name", required=True, help="who the token is for")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument(
        "--expires-in-days",
        type=float,
        default=None,
        help="days until the token expires (default: never)",
    )
    commands.add_parser("list", help="list tokens by name, role and fingerprint")
    delete = commands.add_parser(
        "delete", help="delete a token (a scheduler stops taking it within its token cache's TTL)")
    delete.add_argument("token", help=f"the token, or {FINGERPRINT_PREFIX}<fingerprint> as listed")
    renew = commands.add_parser("renew", help="change a token's expiry or role")
    renew.add_argument("token", help=f"the token, or {FINGERPRINT_PREFIX}<fingerprint> as listed")
    renew.add_argument("--role", default="", choices=[r.value for r in Role])
    expiry = renew.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in-days", type=float, default=None,
                        help="days from now until it expires (default: keep its expiry)")
    expiry.add_argument("--never-expires", action="store_true")
    args = parser.parse_args(list(argv))
    if args.command == "create" and (problem := name_problem(args.name.strip())) is not None:
        parser.error(f"--name: {problem}")
    if args.command == "renew" and args.expires_in_days is not None and args.expires_in_days <= 0:
        parser.error("--expires-in-days: a number of days above 0 (or --never-expires)")
    try:  # a date the token's expiry can be (docs/job-rules.md, rule 18)
        expires_in(SystemClock().now(), getattr(args, "expires_in_days", None))
    except ValueError as exc:
        parser.error(str(exc))
    try:
        audit.configure_audit(audit_log(os.environ))
    except (ConfigError, OSError) as exc:
        parser.error(str(exc))
    try:  # the server's rules from the first command: 0700, 0600, no stranger's files
        open_data_directory(args.data_dir)
        store = SqliteTokenStore(token_store_path(args.data_dir))
    except NotPrivate as exc:
        print(f"scheduler.py tokens: {exc}", file=sys.stderr)
        return 2
    try:
        return _tokens_command(args, store)
    finally:
        store.close()


def _tokens_command(args: argparse.Namespace, store: SqliteTokenStore) -> int:
    clock = SystemClock()
    days = getattr(args, "expires_in_days", None)  # create's and renew's
    expires_at = expires_in(clock.now(), days)
    operator = audit.Actor.local_account()
    if args.command == "create":
        token, record = create_token(store, clock, args.name.strip(), args.role, expires_at)
        audit_created(operator, record)
        print(token)
        return 0
    if args.command == "list":
        for record in store.list():
            expiry = record.expires_at.isoformat() if record.expires_at else "never"
            print(f"{record.name}\t{record.role}\t{FINGERPRINT_PREFIX}{record.fingerprint}"
                  f"\texpires {expiry}")
        return 0
    return _change_token(args, store, operator, expires_at)


def _change_token(args: argparse.Namespace, store: SqliteTokenStore, operator: audit.Actor,
                  expires_at: datetime | None) -> int:
    """``delete`` or ``renew`` one token, named by itself or its listed reference."""
    key = token_key(args.token)
    before = store.get(key)
    if before is None or (args.command == "delete" and not store.delete(key)):
        audit.record(operator, f"token.{args.command}", result=audit.REFUSED, code="NOT_FOUND",
                     token_fingerprint=key)
        print(f"scheduler.py tokens {args.command}: no such token", file=sys.stderr)
        return 1
    if args.command == "delete":
        audit.record(operator, "token.delete", token_fingerprint=key, token_name=before.name)
        print(f"deleted {before.name} {FINGERPRINT_PREFIX}{key}")
        return 0
    after = renewed(before, args.role, expires_at,
                    keep_expiry=expires_at is None and not args.never_expires)
    store.put(after)
    audit_renewed(operator, before, after)
    expiry = after.expires_at.isoformat() if after.expires_at else "never"
    print(f"{after.name}\t{after.role}\texpires {expiry}")
    return 0


MIGRATIONS = {
    "scrub-tokens": "rewrite every record the original wrote in this scheduler's form, "
                    "without its raw token (safe to run again)",
    "to-original": "write this scheduler's QUEUED jobs as the original's records, for going "
                   "back to it (stop this scheduler first)",
    "add-owner-index": "add the indexes the extension's ListJobs and GetUsage need "
                       "(owner-index, submitted-index) and give older records their month "
                       "(the original's table too; safe to run again)",
}


def _migrate_main(argv: Sequence[str]) -> int:
    if not argv or argv[0] not in MIGRATIONS:
        choices = "\n".join(f"  {name:15} {what}" for name, what in MIGRATIONS.items())
        print(f"usage: scheduler.py migrate COMMAND [AWS flags as for serving]\n{choices}",
              file=sys.stderr)
        return 2
    try:
        config = load_config(argv[1:], os.environ, serving=False)
        if config.aws is None:
            raise ConfigError("migrate works on AWS mode's table; leave out --local")
        report = asyncio.run(_migrate(argv[0], config.aws))
    except ConfigError as exc:
        print(f"scheduler migrate: {exc}", file=sys.stderr)
        return 2
    print(report)
    return 0


async def _migrate(command: str, aws: AwsConfig) -> str:
    store = await aws_job_store(aws)
    try:
        if command == "scrub-tokens":
            done = await store.scrub_original_records()
            return (f"rewrote {done.rewritten} records of the original without their tokens; "
                    f"{done.unreadable} unreadable left as they are (see the log); "
                    f"{done.changed_meanwhile} changed by the scheduler meanwhile")
        if command == "add-owner-index":
            return await _add_listing_indexes(store)
        exported = await store.export_queued_to_original(
            lambda record: f"{FINGERPRINT_PREFIX}{record.owner_fingerprint}")
        return (f"wrote {exported} queued jobs as the original's records; their owners are "
                f"fingerprints, which the original cannot match to tokens (docs/migrating.md)")
    finally:
        await store.close()


async def _add_listing_indexes(store: DynamoDbJobStore) -> str:
    added = await store.add_listing_indexes()
    marked = await store.mark_months()
    indexes = (f"added {', '.join(map(repr, added))}; DynamoDB builds them in the background, "
               "and listings work once they are ACTIVE (aws dynamodb describe-table)"
               if added else f"the table already has {OWNER_INDEX!r} and {TIME_INDEX!r}")
    return f"{indexes}; gave {marked} records their {MONTH} for every owner's listings"


def main(argv: Sequence[str]) -> int:
    """Entry point of ``scheduler.py``; returns the exit code."""
    if argv[:1] == ["tokens"]:
        return _tokens_main(argv[1:])
    if argv[:1] == ["migrate"]:
        return _migrate_main(argv[1:])
    if argv[:1] == ["jobs"]:
        return jobs_main(argv[1:])
    if argv[:1] == ["sessions"]:
        return sessions_main(argv[1:])
    if argv[:1] == ["bookings"]:
        return bookings_main(argv[1:])
    try:
        config = load_config(argv, os.environ)
    except ConfigError as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    try:
        audit.configure_audit(config.audit_log)
    except OSError as exc:
        print(f"scheduler: {audit.DESTINATION_VARIABLE}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config))
    except (ConfigError, BackendConfigError, NotPrivate) as exc:
        log.error("cannot start: %s", exc)
        return 2
    except StoreError as exc:  # one line, no traceback: the store is named in the message
        log.error("cannot start: a store failed while recovering the jobs: %s", exc)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0

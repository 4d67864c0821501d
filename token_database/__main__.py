"""Run the token database alone, or make a token in it.

    python -m token_database serve  --sqlite tokens.sqlite3 [--host 127.0.0.1] [--port 8084]
    python -m token_database serve  --dynamodb-table mqc3-tokens [--region R] [--endpoint URL]
    python -m token_database create --sqlite tokens.sqlite3 --name alice --role developer

Either writes its audit stream (docs/audit.md) to stderr, or to ``--audit-log FILE``
(default: ``$SCHEDULER_AUDIT_LOG``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import boto3
import grpc

from common import audit
from common.clock import SystemClock
from common.identity import Role
from common.logs import configure_logging
from pb.mqc3_cloud.token_database.v1 import token_database_pb2_grpc
from token_database.dynamodb_store import DynamoDbTokenStore
from token_database.service import (
    TokenDatabaseService,
    audit_created,
    create_token,
    expires_in,
)
from token_database.store import SqliteTokenStore, TokenStore

log = logging.getLogger("token_database")


def _store(args: argparse.Namespace) -> TokenStore:
    if args.sqlite is not None:
        return SqliteTokenStore(args.sqlite)
    client = boto3.client("dynamodb", region_name=args.region, endpoint_url=args.endpoint)
    return DynamoDbTokenStore(client, args.dynamodb_table)


async def _serve(store: TokenStore, host: str, port: int) -> None:
    server = grpc.aio.server()
    token_database_pb2_grpc.add_TokenDatabaseServiceServicer_to_server(
        TokenDatabaseService(store, SystemClock()), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    log.info("token database serving on %s:%d", host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(5)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m token_database", description=__doc__)
    parser.add_argument("command", choices=["serve", "create"])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--sqlite", type=Path, help="a SQLite file (created if missing)")
    where.add_argument("--dynamodb-table", help="a DynamoDB table keyed by fingerprint")
    parser.add_argument("--region", default="ap-northeast-1")
    parser.add_argument("--endpoint", default=None, help="DynamoDB endpoint (development)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8084)
    parser.add_argument("--name")
    parser.add_argument("--role", choices=[r.value for r in Role])
    parser.add_argument("--expires-in-days", type=float, default=None)
    parser.add_argument("--audit-log", type=Path,
                        default=os.environ.get(audit.DESTINATION_VARIABLE) or None,
                        help=f"append the audit stream to this file (default: "
                             f"${audit.DESTINATION_VARIABLE}, else stderr; docs/audit.md)")
    args = parser.parse_args(list(argv))
    configure_logging("INFO", "text")
    try:
        audit.configure_audit(args.audit_log)
    except OSError as exc:
        parser.error(f"--audit-log: {exc}")
    clock = SystemClock()
    try:
        expires_at = expires_in(clock.now(), args.expires_in_days)
    except ValueError as exc:
        parser.error(str(exc))
    store = _store(args)
    if args.command == "create":
        if not args.name or not args.role:
            parser.error("create needs --name and --role")
        token, record = create_token(store, clock, args.name, args.role, expires_at)
        audit_created(audit.Actor.local_account(), record)
        print(token)
        return 0
    asyncio.run(_serve(store, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

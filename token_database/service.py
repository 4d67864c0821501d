"""The TokenDatabaseService servicer over a TokenStore."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime, timedelta

import grpc
from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from common import audit, timestamps
from common.clock import Clock
from common.identity import Role, fingerprint
from pb.mqc3_cloud.token_database.v1 import token_database_pb2 as pb
from pb.mqc3_cloud.token_database.v1 import token_database_pb2_grpc
from token_database.store import (
    FINGERPRINT_PREFIX,
    TokenRecord,
    TokenStore,
    new_token,
    token_key,
)

log = logging.getLogger(__name__)
ROLES = tuple(role.value for role in Role)
MAX_NAME_CHARS = 128


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a token (it is logged and shown), or None when it can."""
    if not name.strip():
        return "name is required"
    if len(name) > MAX_NAME_CHARS:
        return f"name may be at most {MAX_NAME_CHARS} characters, got {len(name)}"
    if not name.isprintable():
        return "name must be printable characters only (no newlines or control characters)"
    return None


def expires_in(now: datetime, days: float | None) -> datetime | None:
    """The expiry ``days`` from ``now`` (None or 0: never), for the command lines'
    --expires-in-days; ValueError, in words for the user, when it names no date."""
    if not days:
        return None
    try:
        if days > 0:
            return now + timedelta(days=days)
    except (OverflowError, ValueError):  # past the year 9999, or not a number
        pass
    raise ValueError(f"--expires-in-days: a number of days above 0 that ends by the year "
                     f"9999, got {days:g}")


def _stamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _expiry(stamp: Timestamp, has: bool) -> datetime | None:
    """A request's expiry: None (never) when unset, at 0 seconds or before, or beyond what
    a date can hold (docs/job-rules.md, rule 18). Check it with _expiry_problem first."""
    if not has or stamp.seconds <= 0:
        return None
    return timestamps.to_datetime(stamp)


def _expiry_problem(stamp: Timestamp) -> str | None:
    """Why a request's expires_at is no Timestamp (its nanos out of range), or None."""
    if 0 <= stamp.nanos <= timestamps.MAX_NANOS:
        return None
    return f"expires_at: nanos must be from 0 to {timestamps.MAX_NANOS}, got {stamp.nanos}"


def _operator(context: grpc.aio.ServicerContext) -> audit.Actor:
    """Who calls a token database: an operator's tool (with the admin credential where one
    is required, token_database/credential.py), known by its address."""
    return audit.Actor(name="operator", role="operator", address=context.peer() or "")


def audit_created(actor: audit.Actor, record: TokenRecord) -> None:
    """The audit entry of a token made (the service's CreateToken, the command lines)."""
    audit.record(actor, "token.create", token_fingerprint=record.fingerprint,
                 token_name=record.name, token_role=record.role,
                 expires_at=_expiry_text(record.expires_at))


def audit_renewed(actor: audit.Actor, before: TokenRecord, after: TokenRecord) -> None:
    """The audit entry of a token renewed; a changed role is its own action."""
    action = "token.role_change" if after.role != before.role else "token.renew"
    audit.record(actor, action, token_fingerprint=after.fingerprint, token_name=after.name,
                 token_role=after.role, previous_role=before.role,
                 expires_at=_expiry_text(after.expires_at))


def _expiry_text(value: datetime | None) -> str:
    return value.isoformat() if value is not None else "never"


def renewed(record: TokenRecord, role: str, expires_at: datetime | None,
            keep_expiry: bool) -> TokenRecord:
    """The record with a new role ("" keeps it) and expiry (None: never expires)."""
    return replace(record, role=role or record.role,
                   expires_at=record.expires_at if keep_expiry else expires_at)


def _info(record: TokenRecord, token: str) -> pb.TokenInfo:
    return pb.TokenInfo(
        token=token,
        name=record.name,
        role=record.role,
        created_at=_stamp(record.created_at),
        expires_at=_stamp(record.expires_at),
    )


class TokenDatabaseService(token_database_pb2_grpc.TokenDatabaseServiceServicer):
    """Create, look up, renew, delete and list tokens; the store's calls run in threads."""

    def __init__(self, store: TokenStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTokenResponse:
        problem = name_problem(request.name)
        if problem is None and request.role not in ROLES:
            problem = f"role must be one of {', '.join(ROLES)}"
        problem = problem or _expiry_problem(request.expires_at)
        if problem is not None:
            audit.record(_operator(context), "token.create", result=audit.REFUSED,
                         code="INVALID_ARGUMENT", token_name=request.name[:MAX_NAME_CHARS])
            return pb.CreateTokenResponse(status=pb.DATABASE_OPERATION_STATUS_UNSPECIFIED,
                                          detail=problem)
        token, record = await asyncio.to_thread(
            create_token,
            self._store,
            self._clock,
            request.name,
            request.role,
            _expiry(request.expires_at, request.HasField("expires_at")),
        )
        audit_created(_operator(context), record)
        return pb.CreateTokenResponse(
            status=pb.DATABASE_OPERATION_STATUS_OK, token_info=_info(record, token)
        )

    async def GetTokenInfo(
        self, request: pb.GetTokenInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTokenInfoResponse:
        # Only the token itself authenticates: a fingerprint reference is for admin
        # operations on a listed token, never a way to sign in.
        record = await asyncio.to_thread(self._store.get, fingerprint(request.token))
        if record is None:
            return pb.GetTokenInfoResponse(
                status=pb.DATABASE_OPERATION_STATUS_NOT_FOUND, detail="no such token"
            )
        return pb.GetTokenInfoResponse(
            status=pb.DATABASE_OPERATION_STATUS_OK, token_info=_info(record, request.token)
        )

    async def DeleteToken(
        self, request: pb.DeleteTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteTokenResponse:
        key = token_key(request.token)
        if await asyncio.to_thread(self._store.delete, key):
            audit.record(_operator(context), "token.delete", token_fingerprint=key)
            return pb.DeleteTokenResponse(status=pb.DATABASE_OPERATION_STATUS_OK)
        audit.record(_operator(context), "token.delete", result=audit.REFUSED, code="NOT_FOUND",
                     token_fingerprint=key)
        return pb.DeleteTokenResponse(
            status=pb.DATABASE_OPERATION_STATUS_NOT_FOUND, detail="no such token"
        )

    async def RenewToken(
        self, request: pb.RenewTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenewTokenResponse:
        key = token_key(request.token)
        record = await asyncio.to_thread(self._store.get, key)
        if record is None:
            audit.record(_operator(context), "token.renew", result=audit.REFUSED,
                         code="NOT_FOUND", token_fingerprint=key)
            return pb.RenewTokenResponse(
                status=pb.DATABASE_OPERATION_STATUS_NOT_FOUND, detail="no such token"
            )
        problem = _expiry_problem(request.expires_at)
        if request.role and request.role not in ROLES:
            problem = f"role must be one of {', '.join(ROLES)}"
        if problem is not None:
            audit.record(_operator(context), "token.renew", result=audit.REFUSED,
                         code="INVALID_ARGUMENT", token_fingerprint=key)
            return pb.RenewTokenResponse(
                status=pb.DATABASE_OPERATION_STATUS_UNSPECIFIED, detail=problem)
        # Unset keeps the expiry; a set value of 0 seconds means "never expires".
        after = renewed(record, request.role, _expiry(request.expires_at, True),
                        keep_expiry=not request.HasField("expires_at"))
        await asyncio.to_thread(self._store.put, after)
        audit_renewed(_operator(context), record, after)
        return pb.RenewTokenResponse(
            status=pb.DATABASE_OPERATION_STATUS_OK, token_info=_info(after, request.token)
        )

    async def GetTokenInfoList(
        self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> pb.GetTokenInfoListResponse:
        records = await asyncio.to_thread(self._store.list)
        # Raw tokens are not kept; a listing names each by its fingerprint, which
        # DeleteToken and RenewToken accept in place of the token.
        return pb.GetTokenInfoListResponse(
            status=pb.DATABASE_OPERATION_STATUS_OK,
            token_list=[_info(r, FINGERPRINT_PREFIX + r.fingerprint) for r in records],
        )


def create_token(
    store: TokenStore, clock: Clock, name: str, role: str, expires_at: datetime | None = None
) -> tuple[str, TokenRecord]:
    """Make and store a new token; the raw token is returned once and never kept."""
    token = new_token()
    record = TokenRecord(
        fingerprint=token_key(token),
        name=name,
        role=role,
        created_at=clock.now(),
        expires_at=expires_at,
    )
    store.put(record)
    log.info("token created for %s (%s) #%s", name, role, record.fingerprint[:8])
    return token, record

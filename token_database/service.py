"""The TokenDatabaseService servicer over a TokenStore."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import grpc
from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp

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


def _stamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _expiry(stamp: Timestamp, has: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if has and stamp.seconds > 0 else None


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
        if problem is not None:
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
        if await asyncio.to_thread(self._store.delete, token_key(request.token)):
            return pb.DeleteTokenResponse(status=pb.DATABASE_OPERATION_STATUS_OK)
        return pb.DeleteTokenResponse(
            status=pb.DATABASE_OPERATION_STATUS_NOT_FOUND, detail="no such token"
        )

    async def RenewToken(
        self, request: pb.RenewTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenewTokenResponse:
        record = await asyncio.to_thread(self._store.get, token_key(request.token))
        if record is None:
            return pb.RenewTokenResponse(
                status=pb.DATABASE_OPERATION_STATUS_NOT_FOUND, detail="no such token"
            )
        if request.role and request.role not in ROLES:
            return pb.RenewTokenResponse(
                status=pb.DATABASE_OPERATION_STATUS_UNSPECIFIED,
                detail=f"role must be one of {', '.join(ROLES)}",
            )
        renewed = TokenRecord(
            fingerprint=record.fingerprint,
            name=record.name,
            role=request.role or record.role,
            created_at=record.created_at,
            # Unset keeps the expiry; a set value of 0 seconds means "never expires".
            expires_at=(_expiry(request.expires_at, True) if request.HasField("expires_at")
                        else record.expires_at),
        )
        await asyncio.to_thread(self._store.put, renewed)
        return pb.RenewTokenResponse(
            status=pb.DATABASE_OPERATION_STATUS_OK, token_info=_info(renewed, request.token)
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

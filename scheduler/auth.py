"""Who is calling: tokens resolved through the TokenDatabaseService, with a bounded TTL cache."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc

from common.clock import Clock
from common.identity import Principal, Role, fingerprint
from common.logs import REPEATABLE
from common.single_flight import SingleFlight
from message_manager import SchedulerError
from pb.mqc3_cloud.token_database.v1 import token_database_pb2 as tdb_pb2
from pb.mqc3_cloud.token_database.v1 import token_database_pb2_grpc as tdb_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    principal: Principal | None  # None: the token is not known
    expires_at: datetime | None  # the token's own expiry
    valid_until_s: float  # monotonic time the entry may be used until


class TokenResolver:
    """Resolves tokens over one long-lived channel.

    Known tokens are cached for ``ttl_s`` (never past their own expiry), unknown
    ones for ``miss_ttl_s``. Concurrent lookups of one token share a single call.
    The cache is keyed by fingerprint, so it holds no raw token.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        clock: Clock,
        ttl_s: float,
        miss_ttl_s: float,
        max_entries: int,
        call_timeout_s: float = 3.0,
        on_cache: Callable[[bool], None] = lambda hit: None,
    ) -> None:
        self._stub = tdb_grpc.TokenDatabaseServiceStub(channel)
        self._clock = clock
        self._ttl_s = ttl_s
        self._miss_ttl_s = miss_ttl_s
        self._max_entries = max_entries
        self._call_timeout_s = call_timeout_s
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lookups: SingleFlight[str, _Entry] = SingleFlight()
        self._on_cache = on_cache

    async def resolve(self, token: str) -> Principal:
        """The caller behind ``token``, or a SchedulerError saying why not."""
        if not token:
            raise SchedulerError("token_missing")
        key = fingerprint(token)
        entry = self._cache.get(key)
        if entry is not None and entry.valid_until_s > self._clock.monotonic():
            self._on_cache(True)
        else:
            self._on_cache(False)
            entry = await self._lookups.run(key, lambda: self._lookup_and_remember(key, token))
        return self._principal_of(entry)

    def _principal_of(self, entry: _Entry) -> Principal:
        if entry.principal is None:
            raise SchedulerError("token_unknown")
        if entry.expires_at is not None and entry.expires_at <= self._clock.now():
            raise SchedulerError("token_expired", expired_at=entry.expires_at.isoformat())
        return entry.principal

    async def _lookup_and_remember(self, key: str, token: str) -> _Entry:
        entry = await self._lookup(key, token)
        self._remember(key, entry)
        return entry

    async def _lookup(self, key: str, token: str) -> _Entry:
        try:
            answer = await self._stub.GetTokenInfo(
                tdb_pb2.GetTokenInfoRequest(token=token), timeout=self._call_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("token database unreachable: %s", exc.code().name, extra=REPEATABLE)
            raise SchedulerError("token_database_unavailable") from None
        now_s = self._clock.monotonic()
        if answer.status != tdb_pb2.DATABASE_OPERATION_STATUS_OK:
            return _Entry(None, None, now_s + self._miss_ttl_s)
        info = answer.token_info
        try:
            role = Role(info.role)
        except ValueError:
            raise SchedulerError("token_role_unknown", role=repr(info.role[:32])) from None
        expires_at = None
        if info.HasField("expires_at") and info.expires_at.seconds > 0:
            expires_at = info.expires_at.ToDatetime(tzinfo=UTC)
        valid_until_s = now_s + self._ttl_s
        if expires_at is not None:
            left_s = (expires_at - self._clock.now()).total_seconds()
            # An expired token is remembered like an unknown one: briefly.
            valid_until_s = now_s + (min(self._ttl_s, left_s) if left_s > 0 else self._miss_ttl_s)
        return _Entry(
            Principal(name=info.name, role=role, fingerprint=key), expires_at, valid_until_s
        )

    def _remember(self, key: str, entry: _Entry) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

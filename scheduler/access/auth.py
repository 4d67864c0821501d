"""Who is calling: tokens resolved through the TokenDatabaseService, with bounded TTL caches
(docs/errors.md, "Limits per token", says what bounds a flood of unknown tokens)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from itertools import islice

import grpc
from google.protobuf import empty_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from common import timestamps
from common.caller import CALLER_ADDRESS
from common.clock import Clock
from common.identity import Principal, Role, fingerprint
from common.logs import REPEATABLE
from common.single_flight import SingleFlight
from message_manager import SchedulerError
from pb.mqc3_cloud.token_database.v1 import token_database_pb2 as tdb_pb2
from pb.mqc3_cloud.token_database.v1 import token_database_pb2_grpc as tdb_grpc
from scheduler.access.admission import Buckets
from token_database.store import FINGERPRINT_PREFIX

log = logging.getLogger(__name__)
# Our tokens are 48 characters (a prefix and 43 URL-safe ones); bearer tokens of other
# issuers (JWTs) are rarely past 2 KiB. A longer one is refused before it costs a lookup
# (a request past the database's own message limit would read as its outage).
MAX_TOKEN_CHARS = 4096
LISTED_TOKENS_KEPT = 100_000  # fingerprints learned from the database's listing, at most
LISTING_REFRESH_S = 60.0  # how often the listing is read again (new and deleted tokens)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class _Entry:
    principal: Principal | None  # None: the token is not known
    expires_at: datetime | None  # the token's own expiry
    valid_until_s: float  # monotonic time the entry may be used until


# The token the call in progress was resolved for at the edge, before it could wait for a
# leader (scheduler/services/edge.py): the servicer's resolve of it in the same call is the same
# resolution, neither a second cache lookup nor a second count in the cache's metric.
_THIS_CALL: ContextVar[tuple[str, _Entry] | None] = ContextVar("resolved_token", default=None)


class TokenResolver:
    """Resolves tokens over one long-lived channel.

    Known tokens are cached for ``ttl_s`` (never past their own expiry), unknown
    ones for ``miss_ttl_s``, in two bounded caches: a flood of unknown tokens fills
    its own and evicts no known one. Concurrent lookups of one token share a single
    call. A token the database lists (:meth:`learn_listed`) or this replica has resolved
    is looked up when needed; any other costs a lookup from a budget of
    ``lookup_rate_per_s`` per caller address (the edge's ``caller_address``); past it,
    it is refused without a call, so made-up tokens from one address spend neither a
    real user's chance nor another address's. The caches are keyed by fingerprint, so
    they hold no raw token.
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
        max_unknown_entries: int = 10_000,
        lookup_rate_per_s: float = 50.0,
    ) -> None:
        self._stub = tdb_grpc.TokenDatabaseServiceStub(channel)
        self._clock = clock
        self._ttl_s = ttl_s
        self._miss_ttl_s = miss_ttl_s
        self._call_timeout_s = call_timeout_s
        self._known = _Cache(max_entries)  # tokens the database knew (even if expired)
        self._unknown = _Cache(max_unknown_entries)
        self._lookup_rate_per_s = lookup_rate_per_s
        self._new_lookups = Buckets(clock.monotonic)  # by caller address
        self._listed: frozenset[str] = frozenset()  # fingerprints the database listed
        self._listing_refused = False  # said once in the log
        self._lookups: SingleFlight[str, _Entry] = SingleFlight()
        self._on_cache = on_cache

    async def resolve(self, token: str) -> Principal:
        """The caller behind ``token``, or a SchedulerError saying why not."""
        return self._principal_of((await self._entry(token))[1])

    async def resolve_for_call(self, token: str) -> Principal:
        """:meth:`resolve`, remembered for the rest of the call in progress: its later
        resolves of the same token answer the same, without a second lookup."""
        key, entry = await self._entry(token)
        _THIS_CALL.set((key, entry))
        return self._principal_of(entry)

    async def _entry(self, token: str) -> tuple[str, _Entry]:
        if not token:
            raise SchedulerError("token_missing")
        if len(token) > MAX_TOKEN_CHARS:
            raise SchedulerError("token_too_long", maximum=MAX_TOKEN_CHARS)
        key = fingerprint(token)
        this_call = _THIS_CALL.get()
        if (this_call is not None and this_call[0] == key
                and this_call[1].valid_until_s > self._clock.monotonic()):
            return this_call
        entry = self._known.get(key) or self._unknown.get(key)
        if entry is not None and entry.valid_until_s > self._clock.monotonic():
            self._on_cache(True)
        else:
            self._on_cache(False)
            if (key not in self._known and key not in self._listed and key not in self._lookups
                    and not self._new_lookups.take(CALLER_ADDRESS.get(),
                                                   self._lookup_rate_per_s)):
                raise SchedulerError("token_lookups_exhausted")
            entry = await self._lookups.run(key, lambda: self._lookup_and_remember(key, token))
        return key, entry

    async def learn_listed(self) -> bool:
        """Learn which tokens the database has (GetTokenInfoList), so that a real user's
        first call after a start spends no lookup budget. Best effort: a database that
        refuses or lacks the listing leaves the budgets per address alone (False)."""
        try:
            answer = await self._stub.GetTokenInfoList(empty_pb2.Empty(),
                                                       timeout=self._call_timeout_s)
        except grpc.aio.AioRpcError as exc:
            self._listing_failed(exc.code().name)
            return False
        if answer.status != tdb_pb2.DATABASE_OPERATION_STATUS_OK:
            self._listing_failed(tdb_pb2.DatabaseOperationStatus.Name(answer.status))
            return False
        # Another database may list the tokens themselves: only their fingerprints are
        # kept, and the answer holding them is dropped on return.
        keys = (_listed_fingerprint(info.token) for info in answer.token_list)
        self._listed = frozenset(islice((key for key in keys if key), LISTED_TOKENS_KEPT))
        return True

    async def learn_listed_forever(self) -> None:
        """:meth:`learn_listed` every LISTING_REFRESH_S (tokens made or deleted since)."""
        while True:
            await asyncio.sleep(LISTING_REFRESH_S)
            await self.learn_listed()

    def _listing_failed(self, why: str) -> None:
        if not self._listing_refused:
            log.warning("the token database did not list its tokens (%s): tokens new to "
                        "this replica are looked up within each address's budget", why)
        self._listing_refused = True

    def role_of(self, key: str) -> Role | None:
        """The role the token with fingerprint ``key`` had when last resolved, or None."""
        entry = self._known.get(key)
        return entry.principal.role if entry is not None and entry.principal else None

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
        expires_at = _expiry(info)
        valid_until_s = now_s + self._ttl_s
        if expires_at is not None:
            left_s = (expires_at - self._clock.now()).total_seconds()
            # An expired token is remembered like an unknown one: briefly.
            valid_until_s = now_s + (min(self._ttl_s, left_s) if left_s > 0 else self._miss_ttl_s)
        return _Entry(
            Principal(name=info.name, role=role, fingerprint=key), expires_at, valid_until_s
        )

    def _remember(self, key: str, entry: _Entry) -> None:
        if entry.principal is None:
            self._known.pop(key)
            self._unknown.put(key, entry)
        else:
            self._unknown.pop(key)
            self._known.put(key, entry)


def _expiry(info: tdb_pb2.TokenInfo) -> datetime | None:
    """The token's expiry: None (never) when unset, at 0 seconds or before, or beyond what a
    date can hold, whatever the database sent (docs/job-rules.md, rule 18). Nanos out of
    range (a malformed Timestamp) are dropped: they move the expiry by under a second."""
    stamp = info.expires_at
    if not info.HasField("expires_at") or stamp.seconds <= 0:
        return None
    nanos = stamp.nanos if 0 <= stamp.nanos <= timestamps.MAX_NANOS else 0
    return timestamps.to_datetime(Timestamp(seconds=stamp.seconds, nanos=nanos))


def _listed_fingerprint(listed: str) -> str | None:
    """The fingerprint a listing's ``token`` names: ours lists ``sha256:<fingerprint>``;
    a database that lists the tokens themselves gets them fingerprinted."""
    if listed.startswith(FINGERPRINT_PREFIX):
        named = listed[len(FINGERPRINT_PREFIX):]
        return named if _SHA256_HEX.fullmatch(named) else None
    return fingerprint(listed) if listed else None


class _Cache:
    """Entries by fingerprint, the least recently stored dropped past ``max_entries``."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> _Entry | None:
        return self._entries.get(key)

    def pop(self, key: str) -> None:
        self._entries.pop(key, None)

    def put(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

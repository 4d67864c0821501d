"""The token cache on a fake clock, against a counting TokenDatabaseService on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest

from common.clock import FakeClock
from common.identity import Role, fingerprint
from message_manager import SchedulerError
from pb.mqc3_cloud.token_database.v1 import token_database_pb2 as pb
from pb.mqc3_cloud.token_database.v1 import token_database_pb2_grpc
from scheduler.access.auth import TokenResolver
from tests.helpers import refused_as

TTL_S, MISS_TTL_S = 60.0, 5.0


class CountingTokens(token_database_pb2_grpc.TokenDatabaseServiceServicer):
    """Knows a few tokens; counts lookups; can be made slow."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.lookups = 0
        self.delay_s = 0.0
        self.expires_at = clock.now() + timedelta(days=1)
        self.others: dict[str, pb.TokenInfo] = {}  # more tokens, as a test makes them
        self.deadlines: list[float | None] = []  # each call's time left, as this side sees it

    async def GetTokenInfo(self, request: pb.GetTokenInfoRequest,
                           context: grpc.aio.ServicerContext) -> pb.GetTokenInfoResponse:
        self.lookups += 1
        self.deadlines.append(context.time_remaining())
        await asyncio.sleep(self.delay_s)
        if request.token in self.others:
            return pb.GetTokenInfoResponse(status=pb.DATABASE_OPERATION_STATUS_OK,
                                           token_info=self.others[request.token])
        if request.token not in ("good", "expiring"):
            return pb.GetTokenInfoResponse(status=pb.DATABASE_OPERATION_STATUS_NOT_FOUND)
        info = pb.TokenInfo(token=request.token, name="alice", role="developer")
        if request.token == "expiring":
            info.expires_at.FromDatetime(self.expires_at)
        return pb.GetTokenInfoResponse(status=pb.DATABASE_OPERATION_STATUS_OK, token_info=info)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def tokens(clock: FakeClock) -> AsyncIterator[tuple[CountingTokens, grpc.aio.Server, str]]:
    servicer = CountingTokens(clock)
    server = grpc.aio.server()
    token_database_pb2_grpc.add_TokenDatabaseServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, server, f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.fixture
async def resolver(tokens: tuple[CountingTokens, grpc.aio.Server, str],
                   clock: FakeClock) -> AsyncIterator[TokenResolver]:
    async with grpc.aio.insecure_channel(tokens[2]) as channel:
        yield TokenResolver(channel, clock, TTL_S, MISS_TTL_S, max_entries=2,
                            call_timeout_s=1.0)


async def _code(resolver: TokenResolver, token: str) -> str:
    with pytest.raises(SchedulerError) as refused:
        await resolver.resolve(token)
    return refused.value.key


async def test_a_known_token_is_asked_for_once_per_ttl(resolver: TokenResolver,
                                                       tokens: tuple[CountingTokens, ...],
                                                       clock: FakeClock) -> None:
    servicer = tokens[0]
    principal = await resolver.resolve("good")
    assert (principal.name, principal.role) == ("alice", Role.DEVELOPER)
    await resolver.resolve("good")
    clock.advance(TTL_S - 1)
    await resolver.resolve("good")
    assert servicer.lookups == 1
    clock.advance(2)
    await resolver.resolve("good")
    assert servicer.lookups == 2


async def test_concurrent_lookups_of_one_token_share_one_call(
        resolver: TokenResolver, tokens: tuple[CountingTokens, ...]) -> None:
    servicer = tokens[0]
    servicer.delay_s = 0.1
    found = await asyncio.gather(*(resolver.resolve("good") for _ in range(10)))
    assert {p.fingerprint for p in found} == {found[0].fingerprint}
    assert servicer.lookups == 1


async def test_an_unknown_token_is_remembered_briefly(resolver: TokenResolver,
                                                      tokens: tuple[CountingTokens, ...],
                                                      clock: FakeClock) -> None:
    servicer = tokens[0]
    assert await _code(resolver, "nope") == "token_unknown"
    assert await _code(resolver, "nope") == "token_unknown"
    assert servicer.lookups == 1
    clock.advance(MISS_TTL_S + 1)
    assert await _code(resolver, "nope") == "token_unknown"
    assert servicer.lookups == 2


async def test_a_cached_token_is_refused_once_it_expires(resolver: TokenResolver,
                                                         tokens: tuple[CountingTokens, ...],
                                                         clock: FakeClock) -> None:
    tokens[0].expires_at = clock.now() + timedelta(seconds=10)
    await resolver.resolve("expiring")
    clock.advance(11)  # within the cache TTL, past the token's own expiry
    assert await _code(resolver, "expiring") == "token_expired"
    assert await _code(resolver, "expiring") == "token_expired"
    assert tokens[0].lookups == 2  # asked again once, then remembered as expired


async def test_an_empty_token_never_reaches_the_database(resolver: TokenResolver,
                                                         tokens: tuple[CountingTokens, ...]
                                                         ) -> None:
    assert await _code(resolver, "") == "token_missing"
    assert tokens[0].lookups == 0


async def test_the_cache_of_known_tokens_is_bounded(resolver: TokenResolver,
                                                    tokens: tuple[CountingTokens, ...]) -> None:
    tokens[0].others["token-bob"] = _info("bob")
    for token in ("good", "expiring", "token-bob"):  # max_entries=2
        await resolver.resolve(token)
    before = tokens[0].lookups
    await resolver.resolve("good")  # evicted as the oldest entry: asked again
    assert tokens[0].lookups == before + 1


async def test_unknown_tokens_evict_no_known_one(resolver: TokenResolver,
                                                tokens: tuple[CountingTokens, ...]) -> None:
    await resolver.resolve("good")
    for i in range(20):  # ten times the known tokens' cache (max_entries=2)
        assert await _code(resolver, f"random-{i}") == "token_unknown"
    before = tokens[0].lookups
    await resolver.resolve("good")
    assert tokens[0].lookups == before  # still cached


async def test_the_cache_of_unknown_tokens_is_bounded_too(tokens: Tokens,
                                                         clock: FakeClock) -> None:
    async with grpc.aio.insecure_channel(tokens[2]) as channel:
        resolver = TokenResolver(channel, clock, TTL_S, MISS_TTL_S, max_entries=2,
                                 max_unknown_entries=2)
        for token in ("nope-1", "nope-2", "nope-3"):
            assert await _code(resolver, token) == "token_unknown"
        assert await _code(resolver, "nope-3") == "token_unknown"
        assert tokens[0].lookups == 3
        assert await _code(resolver, "nope-1") == "token_unknown"  # the oldest, forgotten
        assert tokens[0].lookups == 4


async def test_tokens_never_resolved_cost_lookups_at_a_bounded_rate(tokens: Tokens,
                                                                   clock: FakeClock) -> None:
    async with grpc.aio.insecure_channel(tokens[2]) as channel:
        resolver = TokenResolver(channel, clock, TTL_S, MISS_TTL_S, max_entries=2,
                                 lookup_rate_per_s=1.0)  # bursts of 2
        await resolver.resolve("good")
        refused = [await _code(resolver, f"random-{i}") for i in range(50)]
        assert tokens[0].lookups == 2
        assert refused == ["token_unknown"] + ["token_lookups_exhausted"] * 49
        clock.advance(TTL_S)  # the budget refills; "good" is due to be asked for again
        refused = [await _code(resolver, f"again-{i}") for i in range(3)]
        assert refused == ["token_unknown"] * 2 + ["token_lookups_exhausted"]
        assert tokens[0].lookups == 4
        assert (await resolver.resolve("good")).name == "alice"  # spent, yet a known token
        assert tokens[0].lookups == 5


async def test_with_the_database_down_cached_tokens_work_and_others_are_unavailable(
        resolver: TokenResolver, tokens: tuple[CountingTokens, grpc.aio.Server, str]) -> None:
    await resolver.resolve("good")
    await tokens[1].stop(0)
    assert (await resolver.resolve("good")).name == "alice"
    assert await _code(resolver, "expiring") == "token_database_unavailable"


async def test_callers_sharing_a_lookup_are_answered_when_the_first_one_leaves(
        resolver: TokenResolver, tokens: tuple[CountingTokens, ...]) -> None:
    servicer = tokens[0]
    servicer.delay_s = 0.2
    first = asyncio.create_task(resolver.resolve("good"))
    await asyncio.sleep(0.05)  # its lookup is under way
    others = [asyncio.create_task(resolver.resolve("good")) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()  # its caller hung up
    answered = await asyncio.wait_for(asyncio.gather(*others), 2.0)
    assert {p.name for p in answered} == {"alice"}
    assert servicer.lookups == 1
    assert first.cancelled()


async def test_a_token_never_reaches_the_log_when_the_database_is_down_or_slow(
        tokens: tuple[CountingTokens, grpc.aio.Server, str], clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    # Broke when: the "unreachable" log line carried the token it was looking up. The
    # other log checks only ever took the happy and the unknown-token paths.
    caplog.set_level(logging.DEBUG)
    secret = "mqc3_" + "s3cret-token-value" * 3
    servicer = tokens[0]
    servicer.delay_s = 2.0  # slower than the call's timeout
    async with grpc.aio.insecure_channel(tokens[2]) as channel:
        slow = TokenResolver(channel, clock, TTL_S, MISS_TTL_S, max_entries=2,
                             call_timeout_s=0.2)
        assert await _code(slow, secret) == "token_database_unavailable"
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:  # nothing listens
        down = TokenResolver(channel, clock, TTL_S, MISS_TTL_S, max_entries=2,
                             call_timeout_s=0.5)
        assert await _code(down, secret) == "token_database_unavailable"
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 2
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in str(record.args)


Tokens = tuple[CountingTokens, grpc.aio.Server, str]


def _info(name: str = "bob", role: str = "developer") -> pb.TokenInfo:
    return pb.TokenInfo(name=name, role=role)


async def test_the_token_database_is_given_three_seconds_to_answer(tokens: Tokens,
                                                                    clock: FakeClock) -> None:
    async with grpc.aio.insecure_channel(tokens[2]) as channel:
        await TokenResolver(channel, clock, TTL_S, MISS_TTL_S, max_entries=2).resolve("good")
    [left_s] = tokens[0].deadlines
    assert left_s is not None and 2.0 < left_s < 3.5  # 3 s, as the header carries it


async def test_tokens_looked_up_at_once_each_resolve_to_their_own_caller(
        resolver: TokenResolver, tokens: Tokens) -> None:
    tokens[0].others["token-bob"] = _info("bob")
    tokens[0].delay_s = 0.1
    alice, bob = await asyncio.gather(resolver.resolve("good"), resolver.resolve("token-bob"))
    assert (alice.name, alice.fingerprint) == ("alice", fingerprint("good"))
    assert (bob.name, bob.fingerprint) == ("bob", fingerprint("token-bob"))
    assert tokens[0].lookups == 2


async def test_each_resolution_is_counted_as_a_cache_hit_or_miss(tokens: Tokens,
                                                                 clock: FakeClock) -> None:
    seen: list[bool] = []
    async with grpc.aio.insecure_channel(tokens[2]) as channel:
        resolver = TokenResolver(channel, clock, TTL_S, MISS_TTL_S, max_entries=2,
                                 on_cache=seen.append)
        await resolver.resolve("good")
        await resolver.resolve("good")
        for _ in range(2):
            assert await _code(resolver, "nope") == "token_unknown"
    assert seen == [False, True, False, True]


async def test_a_cached_token_is_asked_for_again_exactly_at_its_ttl(
        resolver: TokenResolver, tokens: Tokens, clock: FakeClock) -> None:
    await resolver.resolve("good")
    clock.advance(TTL_S)
    await resolver.resolve("good")
    assert tokens[0].lookups == 2


async def test_the_cache_holds_as_many_tokens_as_it_may(resolver: TokenResolver,
                                                        tokens: Tokens) -> None:
    for token in ("good", "expiring", "good", "expiring"):  # max_entries=2
        await resolver.resolve(token)
    assert tokens[0].lookups == 2


async def test_a_token_is_refused_from_the_instant_it_expires(
        resolver: TokenResolver, tokens: Tokens, clock: FakeClock) -> None:
    expiry = clock.now() + timedelta(seconds=10)
    tokens[0].expires_at = expiry
    await resolver.resolve("expiring")
    clock.advance(10)
    await refused_as(resolver.resolve("expiring"), "token_expired",
                     expired_at=expiry.isoformat())


async def test_a_token_expiring_now_is_remembered_briefly_like_an_unknown_one(
        resolver: TokenResolver, tokens: Tokens, clock: FakeClock) -> None:
    tokens[0].expires_at = clock.now()
    for _ in range(2):
        assert await _code(resolver, "expiring") == "token_expired"
    assert tokens[0].lookups == 1


async def test_a_token_expiring_within_the_ttl_is_looked_up_again_once_renewed(
        resolver: TokenResolver, tokens: Tokens, clock: FakeClock) -> None:
    tokens[0].expires_at = clock.now() + timedelta(seconds=0.5)
    await resolver.resolve("expiring")
    tokens[0].expires_at = clock.now() + timedelta(days=1)  # renewed in the database
    clock.advance(1)
    assert (await resolver.resolve("expiring")).name == "alice"


async def test_a_token_with_a_distant_expiry_is_cached_for_the_whole_ttl(
        resolver: TokenResolver, tokens: Tokens, clock: FakeClock) -> None:
    await resolver.resolve("expiring")  # expires in a day
    clock.advance(TTL_S - 1)
    await resolver.resolve("expiring")
    assert tokens[0].lookups == 1


async def test_an_expiry_of_zero_means_the_token_never_expires(
        resolver: TokenResolver, tokens: Tokens, clock: FakeClock) -> None:
    forever, ancient = _info(), _info()
    forever.expires_at.SetInParent()  # present, at zero seconds
    ancient.expires_at.seconds = 1  # a second after the epoch: long expired
    tokens[0].others.update({"forever": forever, "ancient": ancient})
    clock.advance(365 * 24 * 3600)
    assert (await resolver.resolve("forever")).name == "bob"
    await refused_as(resolver.resolve("ancient"), "token_expired",
                     expired_at="1970-01-01T00:00:01+00:00")


async def test_a_role_the_scheduler_does_not_know_is_refused_quoted_and_cut(
        resolver: TokenResolver, tokens: Tokens) -> None:
    tokens[0].others["odd"] = _info(role="r" * 40)
    await refused_as(resolver.resolve("odd"), "token_role_unknown", role=repr("r" * 32))

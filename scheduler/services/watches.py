"""WatchJob's streams: a job's status now, then each change, until it is final.

Each stream polls the JobManager that serves (the leader's memory; a follower's reads of
the store) every POLL_S and sends a message when the status or its detail changed. A
poll costs a dictionary lookup on the leader, so a poll is simpler than a subscription
and just as correct: a change between two polls that is changed again before the next
(QUEUED → RUNNING → COMPLETED within half a second) shows only as its end, and the
final status always arrives. Streams hold no admission slot (they would hold a drain
up); each token may hold a bounded number. On drain every stream ends at once with an
in-band UNAVAILABLE, so a client watches again elsewhere. A stream that ends refused
carries the refusal's reason (and incident) in its trailing metadata, as every other
call does (docs/errors.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator

import grpc

from common.caller import CALLER_ADDRESS
from common.clock import Clock
from common.identity import Principal
from common.logs import REPEATABLE, new_id
from message_manager import SchedulerError
from pb.mqc3_scheduler.extension.v1 import jobs_pb2 as pb
from scheduler.access.auth import TokenResolver
from scheduler.messages import convert
from scheduler.services.edge import Edge, MalformedRequest, caller_address, refused

log = logging.getLogger(__name__)

POLL_S = 0.5


class Watches:
    """The open WatchJob streams of one scheduler, counted per token."""

    def __init__(self, clock: Clock, max_per_token: int, poll_s: float = POLL_S) -> None:
        self._clock = clock
        self._max_per_token = max_per_token
        self._poll_s = poll_s
        self._open: Counter[str] = Counter()
        self._closing = asyncio.Event()

    @property
    def open_count(self) -> int:
        """How many streams are open."""
        return sum(self._open.values())

    def close(self) -> None:
        """End every stream (drain); new ones are answered UNAVAILABLE in band."""
        self._closing.set()

    async def watch(self, edge: Edge, auth: TokenResolver, request: pb.WatchJobRequest,
                    context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchJobResponse]:
        """The stream's messages; refusals are one message with ``error``, then the end."""
        if edge.not_serving is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, edge.not_serving)
        code = "OK"
        try:
            if isinstance(request, MalformedRequest):
                raise SchedulerError("request_malformed", method="WatchJob")
            edge.authorize(context)
            CALLER_ADDRESS.set(caller_address(context))  # whose budget a new token spends
            principal = await auth.resolve(request.token)
            if self._closing.is_set():
                raise SchedulerError("watch_interrupted")
            if self._open[principal.fingerprint] >= self._max_per_token:
                raise SchedulerError("too_many_watches", count=self._open[principal.fingerprint],
                                     limit=self._max_per_token)
            self._open[principal.fingerprint] += 1
            try:
                async for message in self._changes(edge, principal, request.job_id):
                    yield message
            finally:
                self._open[principal.fingerprint] -= 1
                if self._open[principal.fingerprint] <= 0:
                    del self._open[principal.fingerprint]
        except SchedulerError as exc:
            code = exc.code
            yield pb.WatchJobResponse(error=refused(context, "WatchJob", exc))
        except Exception:  # answered in band, as every other call
            code = "INTERNAL"
            incident = new_id()
            log.exception("WatchJob failed unexpectedly, incident %s", incident,
                          extra=REPEATABLE)
            yield pb.WatchJobResponse(
                error=refused(context, "WatchJob", SchedulerError("unexpected"), incident))
        finally:
            edge.metrics.rpc_observe("WatchJob", code, 0)

    async def _changes(self, edge: Edge, principal: Principal,
                       job_id: str) -> AsyncIterator[pb.WatchJobResponse]:
        last: tuple[int, str] | None = None
        while True:
            manager = edge.replicas.manager
            # An admin watching another's job is audited once, not at every poll.
            record = await manager.status(principal, job_id,
                                          audit_as="job.watch" if last is None else None)
            now = (convert.JOB_STATUS[record.status], manager.status_detail(record))
            if now != last:
                last = now
                message = pb.WatchJobResponse(status=now[0], status_detail=now[1])
                message.observed_at.CopyFrom(convert.timestamp(self._clock.now()))
                yield message
            if record.status.is_final:
                return
            if await self._closed_within(self._poll_s):
                raise SchedulerError("watch_interrupted")

    async def _closed_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

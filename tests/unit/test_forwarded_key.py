"""A SubmitJob a follower passed on, and then took itself, makes one job (issue 27: the
interleaving test found two when the leader died just after writing the job).

The follower gives a call without a key one of its own when it passes it on, so that
passing it again cannot make a second job (docs/replicas.md); should the follower lead by
the time the call is tried again, the call goes on here under that same key.
"""

from __future__ import annotations

from typing import Any, cast

import grpc

from job_manager.manager import JobManager
from leadership.lease import Lease
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from scheduler.messages.validation import IDEMPOTENCY_METADATA, idempotency_key
from scheduler.operations.metrics import Metrics
from scheduler.replication.forwarding import FORWARDED_KEY_PREFIX, Forwarder, LeaderUnreachable
from scheduler.replication.replicas import Replicas
from tests.unit.test_failed_recovery import FailingRecovery, SlowTable
from tests.unit.test_lease import DURATION_S, RENEW_S, Clock

SUBMIT = "/mqc3_cloud.scheduler.v1.SubmissionService/SubmitJob"


class Call:
    """A SubmitJob's server side, as the SDK sends it: no key."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> Any:
        return self.metadata

    def time_remaining(self) -> float:
        return 30.0


class DiesAfterWriting(Forwarder):
    """The leader takes the call and dies before it answers; this replica then leads."""

    def __init__(self, leader: Lease, follower: Lease) -> None:
        super().__init__("a")
        self.sent: list[list[tuple[str, str]]] = []
        self._leader, self._follower = leader, follower

    async def call(self, address: str, path: str, request: Any, response_type: Any,
                   metadata: list[tuple[str, str]], timeout_s: float,
                   answer_to: grpc.aio.ServicerContext | None = None) -> Any:
        self.sent.append(metadata)
        await self._leader.release()  # gone, its lease handed over at once
        await self._follower.step()
        raise LeaderUnreachable("the leader died before it answered")


def replica(table: SlowTable, clock: Clock, name: str) -> tuple[Replicas, Lease]:
    lease = Lease(table, name, clock, DURATION_S, RENEW_S, (f"{name}:8082", f"{name}:8081"))
    made = Replicas(lambda fence: cast(JobManager, FailingRecovery(False)), Metrics(),
                    monotonic=clock, lease=lease, settle_s=0)
    return made, lease


async def test_a_call_passed_on_and_then_taken_here_keeps_the_key_it_was_given() -> None:
    table, clock = SlowTable(), Clock()
    b, b_lease = replica(table, clock, "b")
    await b.start()
    a, a_lease = replica(table, clock, "a")
    await a.start()
    assert b_lease.leading and not a_lease.leading
    forwarder = DiesAfterWriting(b_lease, a_lease)
    a._forwarder = forwarder  # as app.py gives it one

    async def submit(manager: JobManager) -> str:
        return idempotency_key(call)  # what SubmissionService reads

    call = cast(grpc.aio.ServicerContext, Call())
    key = await a.call_leader(SUBMIT, pb.SubmitJobRequest(), None, call, submit)
    given = dict(forwarder.sent[0])[IDEMPOTENCY_METADATA]
    assert given.startswith(FORWARDED_KEY_PREFIX)
    assert key == given  # the same key here: the dead leader's job is the one answered
    assert idempotency_key(call) == ""  # and only for that call


async def test_a_call_taken_here_at_once_has_no_key_made_up() -> None:
    table, clock = SlowTable(), Clock()
    a, _ = replica(table, clock, "a")
    await a.start()

    async def submit(manager: JobManager) -> str:
        return idempotency_key(call)

    call = cast(grpc.aio.ServicerContext, Call())
    assert await a.call_leader(SUBMIT, pb.SubmitJobRequest(), None, call, submit) == ""

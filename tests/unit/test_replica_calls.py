"""Where a leader's call goes (scheduler/replication/replicas.py, docs/replicas.md "Where each call
goes"), on a lease table in memory, a forwarder that answers as told, and managers that
recover at once: run here while this replica leads, passed to the leader's port of the
call's service while another leads, refused when it was passed on to a follower, and
waiting, bounded and seated in the room of waiting calls, while no one can take it.

tests/integration/test_replica_routing.py drives the same over real processes; these are
fast enough for the mutation runs (docs/mutation.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest

from job_manager.manager import JobManager
from job_manager.stores import Deposed, Fence
from leadership.lease import Lease
from message_manager import SchedulerError
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, submission_pb2
from scheduler.access.admission import LeaderWaitRoom
from scheduler.operations.metrics import Metrics
from scheduler.replication.forwarding import (
    FORWARDED_BY,
    FORWARDED_CALL,
    Forwarder,
    LeaderUnreachable,
)
from scheduler.replication.replicas import DEADLINE_MARGIN_S, NoLeader, Replicas
from scheduler.replication.undelivered import ASSIGN_PATH, RETURN_PATH
from tests.unit.test_lease import DURATION_S, RENEW_S, Clock, Table

SUBMIT = "/mqc3_cloud.scheduler.v1.SubmissionService/SubmitJob"
STATUS = "/mqc3_cloud.scheduler.v1.SubmissionService/GetJobStatus"
CANCEL = "/mqc3_cloud.scheduler.v1.SubmissionService/CancelJob"
REQUEST = submission_pb2.SubmitJobRequest(token="t")


class Watchdog:
    async def run(self) -> None:
        await asyncio.Event().wait()


class Manager:
    """A JobManager that recovers at once."""

    def __init__(self, fence: Fence | None) -> None:
        self.fence = fence
        self.watchdog = Watchdog()
        self.shut = False


    def watch_deadlines(self) -> Any:
        return self.watchdog.run()

    async def recover(self) -> None:
        pass

    async def prefetch_programs(self) -> int:
        return 0

    def use_backends(self, table: Any) -> None:
        pass

    def shutdown(self) -> None:
        self.shut = True


class Passing:
    """A Forwarder whose leader answers each call with the next of ``answers`` (an
    exception is raised), then with a SubmitJobResponse naming a job."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, str, list[tuple[str, str]], float]] = []
        self.sent: list[tuple[Any, Any]] = []  # each call's request and response type

    async def call(self, address: str, path: str, request: Any, response_type: Any,
                   metadata: list[tuple[str, str]], timeout_s: float,
                   answer_to: Any = None) -> Any:
        self.calls.append((address, path, metadata, timeout_s))
        self.sent.append((request, response_type))
        answer = self.answers.pop(0) if self.answers else submission_pb2.SubmitJobResponse(
            job_id="j1")
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, asyncio.Future):
            return await answer  # a leader that has not answered yet
        return answer

    def metadata(self, path: str, context: Any) -> list[tuple[str, str]]:
        # What the call carries: made from its path and its own metadata.
        return [(FORWARDED_BY, "b"), ("x-path", path),
                ("x-sent", str(len(context.invocation_metadata())))]


class Context:
    """A call's context: the metadata it was sent with and the time its caller left it."""

    def __init__(self, *metadata: tuple[str, str], remaining_s: float | None = None) -> None:
        self.metadata = metadata
        self.remaining_s = remaining_s
        self.done_callbacks: list[Any] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        return self.remaining_s

    def add_done_callback(self, callback: Any) -> None:
        self.done_callbacks.append(callback)


def replica(table: Table, clock: Clock, name: str, forwarder: Passing | None = None,
            wait_s: float = 30.0, room: LeaderWaitRoom | None = None) -> Replicas:
    lease = Lease(table, name, clock, DURATION_S, RENEW_S, (f"{name}:8082", f"{name}:8081"))
    return Replicas(lambda fence: cast(JobManager, Manager(fence)), Metrics(), monotonic=clock,
                    lease=lease, forwarder=cast(Forwarder, forwarder), wait_s=wait_s,
                    settle_s=0, room=room)


class Runs:
    """A leader's call run here: the managers it ran on, each answered with ``answer``
    (an exception is raised)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.managers: list[Manager] = []

    async def __call__(self, manager: JobManager) -> Any:
        self.managers.append(cast(Manager, manager))
        answer = self.answers.pop(0) if self.answers else "ran here"
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def call(replicas: Replicas, path: str = SUBMIT, context: Context | None = None,
               runs: Runs | None = None, before_waiting: Any = None) -> Any:
    return await replicas.call_leader(path, REQUEST, submission_pb2.SubmitJobResponse,
                                      cast(Any, context or Context()), runs or Runs(),
                                      before_waiting=before_waiting)


def forwarded(replicas: Replicas, method: str, result: str) -> float:
    labels = {"method": method, "result": result}
    registry = replicas._metrics.registry
    return registry.get_sample_value("mqc3_forwarded_calls_total", labels) or 0.0


async def turns(done: Callable[[], bool], sleep_s: float = 0.0) -> None:
    """Let the other tasks run until ``done``; a bounded number of turns (of ``sleep_s``
    each, for work that waits on a timer), never an assertion on how long it took."""
    for _ in range(1000):
        if done():
            return
        await asyncio.sleep(sleep_s)
    raise AssertionError("not done after 1000 turns of the event loop")


@pytest.fixture
def table() -> Table:
    return Table()


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def leader_and_follower(table: Table, clock: Clock, forwarder: Passing,
                              **settings: Any) -> tuple[Replicas, Replicas]:
    a = replica(table, clock, "a")
    await a.start()
    b = replica(table, clock, "b", forwarder, **settings)
    await b.start()
    assert a.ready and not b.ready
    return a, b


async def test_the_leader_runs_a_call_itself(table: Table, clock: Clock) -> None:
    forwarder = Passing()
    a = replica(table, clock, "a", forwarder)
    await a.start()
    runs = Runs()
    assert await call(a, runs=runs) == "ran here"
    assert runs.managers == [cast(Manager, a.manager)] and forwarder.calls == []


@pytest.mark.parametrize(("path", "address"), [(SUBMIT, "a:8082"), (ASSIGN_PATH, "a:8081")])
async def test_a_follower_passes_a_call_to_the_leaders_port_of_its_service(
        table: Table, clock: Clock, path: str, address: str) -> None:
    forwarder = Passing()
    _, b = await leader_and_follower(table, clock, forwarder)
    runs = Runs()
    answer = await call(b, path, Context(remaining_s=5.0), runs)
    assert answer.job_id == "j1" and runs.managers == []
    [(sent_to, sent_path, metadata, timeout_s)] = forwarder.calls
    assert (sent_to, sent_path) == (address, path)
    assert metadata[:3] == [(FORWARDED_BY, "b"), ("x-path", path), ("x-sent", "0")]
    assert forwarder.sent == [(REQUEST, submission_pb2.SubmitJobResponse)]
    assert (FORWARDED_CALL in dict(metadata)) == (path == ASSIGN_PATH)  # named for a give-back
    # The caller's deadline, less the margin that lets our answer reach it first.
    assert 5.0 - DEADLINE_MARGIN_S - 0.5 < timeout_s <= 5.0 - DEADLINE_MARGIN_S
    assert forwarded(b, path.rsplit("/", 1)[-1], "answered") == 1


async def test_a_hand_over_passed_on_is_given_back_if_its_node_never_has_it(
        table: Table, clock: Clock) -> None:
    forwarder = Passing(execution_pb2.AssignNextJobResponse(job_id="j1"),
                        execution_pb2.AssignNextJobResponse())
    _, b = await leader_and_follower(table, clock, forwarder)
    handed, empty = Context(), Context()
    await call(b, ASSIGN_PATH, handed)
    await call(b, ASSIGN_PATH, empty)  # no job handed over: nothing to give back
    assert (len(handed.done_callbacks), len(empty.done_callbacks)) == (1, 0)
    handed.done_callbacks[0](Ended(cancelled=True))  # the node's call ended unanswered
    await turns(lambda: len(forwarder.calls) == 3)
    assert forwarder.calls[2][:2] == ("a:8081", RETURN_PATH)


async def test_an_answer_without_a_job_is_passed_back_as_it_came(
        table: Table, clock: Clock) -> None:
    forwarder = Passing(submission_pb2.CancelJobResponse())
    _, b = await leader_and_follower(table, clock, forwarder)
    answer = await b.call_leader(CANCEL, submission_pb2.CancelJobRequest(job_id="j1"),
                                 submission_pb2.CancelJobResponse, cast(Any, Context()),
                                 Runs())
    assert answer == submission_pb2.CancelJobResponse()


class Ended:
    """What a call's done callback is given."""

    def __init__(self, cancelled: bool) -> None:
        self._cancelled = cancelled

    def cancelled(self) -> bool:
        return self._cancelled


async def test_a_follower_whose_caller_leaves_gives_the_hand_over_back(
        table: Table, clock: Clock) -> None:
    unanswered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    forwarder = Passing(unanswered, execution_pb2.AssignNextJobResponse())
    _, b = await leader_and_follower(table, clock, forwarder)
    waiting = asyncio.ensure_future(call(b, ASSIGN_PATH))
    await turns(lambda: bool(forwarder.calls))
    waiting.cancel()  # the node's call ended before the leader's answer reached it
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await turns(lambda: len(forwarder.calls) == 2)
    (address, _, metadata, _), (back_to, back_path, _, _) = forwarder.calls
    assert (back_to, back_path) == (address, RETURN_PATH)
    assert FORWARDED_CALL in dict(metadata)


async def test_a_call_passed_on_to_a_follower_is_sent_back_to_be_routed_again(
        table: Table, clock: Clock) -> None:
    forwarder = Passing()
    _, b = await leader_and_follower(table, clock, forwarder)
    with pytest.raises(NoLeader, match=r"^this replica does not lead$"):
        await call(b, context=Context((FORWARDED_BY, "c")))
    assert forwarder.calls == []


async def test_a_follower_that_cannot_reach_the_leader_waits_then_says_so(
        table: Table, clock: Clock) -> None:
    forwarder = Passing(*[LeaderUnreachable("gone")] * 1000)
    _, b = await leader_and_follower(table, clock, forwarder, wait_s=0.05)
    with pytest.raises(NoLeader, match=r"^no leader could take the call within \d+\.\d s$") as no:
        await call(b)
    assert float(str(no.value).split()[-2]) < 10.0  # how long it waited, not a clock reading
    assert forwarded(b, "SubmitJob", "unreachable") >= 1
    assert forwarded(b, "SubmitJob", "answered") == 0
    assert b.room.calls == 0 and b.room.bytes == 0  # seated while waiting, then let go


async def test_with_no_leader_a_call_is_checked_seated_and_waits_until_one_serves(
        table: Table, clock: Clock) -> None:
    room = LeaderWaitRoom()
    a = replica(table, clock, "a", room=room)  # its first round not yet made
    checked: list[int] = []

    async def check() -> None:
        checked.append(room.calls)

    runs = Runs()
    waiting = asyncio.ensure_future(call(a, runs=runs, before_waiting=check))
    await turns(lambda: room.calls == 1)
    assert (room.calls, room.bytes) == (1, REQUEST.ByteSize())
    await a.start()  # it leads, recovers, and serves: the call runs here
    assert await waiting == "ran here"
    assert checked == [0]  # once, before its seat
    assert runs.managers == [cast(Manager, a.manager)]
    assert (room.calls, room.bytes) == (0, 0)


async def test_a_caller_refused_before_waiting_takes_no_seat(table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")

    async def refuse() -> None:
        raise SchedulerError("token_unknown")

    with pytest.raises(SchedulerError):
        await call(a, before_waiting=refuse)
    assert (a.room.calls, a.room.bytes) == (0, 0)


async def test_a_call_that_finds_the_waiting_room_full_is_refused_at_once(
        table: Table, clock: Clock) -> None:
    room = LeaderWaitRoom(max_calls=10, max_bytes=REQUEST.ByteSize() - 1)
    a = replica(table, clock, "a", room=room)
    with pytest.raises(SchedulerError) as refused:
        await call(a)
    assert refused.value.key == "leader_wait_full"
    assert (room.calls, room.bytes) == (0, 0)


async def test_a_deposed_leader_steps_down_and_the_call_runs_in_the_next_term(
        table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.start()
    first = cast(Manager, a.manager)
    assert first.fence is not None
    runs = Runs(Deposed(first.fence))
    assert await call(a, runs=runs) == "ran here"
    # No one else took the lease: a took it back at once, at a new epoch, and recovered.
    second = runs.managers[1]
    assert runs.managers[0] is first and first.shut
    assert second.fence is not None and second.fence.epoch == first.fence.epoch + 1


async def test_a_deposed_call_of_an_old_term_leaves_the_new_term_alone(
        table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a")
    await a.start()
    old = a.manager
    a._lease.deposed()  # type: ignore[union-attr]
    await a._lease.step()  # type: ignore[union-attr]
    await asyncio.sleep(0)
    assert a.ready and a.manager is not old
    epoch = a._lease.epoch  # type: ignore[union-attr]
    a._deposed(old)
    assert a._lease.leading and a._lease.epoch == epoch  # type: ignore[union-attr]


async def test_a_read_of_a_live_job_goes_to_the_leader_from_a_follower_only(
        table: Table, clock: Clock) -> None:
    forwarder = Passing(submission_pb2.GetJobStatusResponse(), LeaderUnreachable("gone"))
    a = replica(table, clock, "a", forwarder)
    await a.start()
    b = replica(table, clock, "b", forwarder, wait_s=20.0)
    await b.start()
    alone = replica(table, clock, "c")  # a follower with no road to the leader
    await alone.start()
    request = submission_pb2.GetJobStatusRequest(job_id="j1")

    async def read(replicas: Replicas, context: Context | None = None) -> Any:
        return await replicas.read_at_leader(STATUS, request,
                                             submission_pb2.GetJobStatusResponse,
                                             cast(Any, context or Context()))

    assert await read(b, Context(remaining_s=60.0)) == submission_pb2.GetJobStatusResponse()
    address, path, metadata, timeout_s = forwarder.calls[0]
    assert (address, path) == ("a:8082", STATUS)
    assert metadata == [(FORWARDED_BY, "b"), ("x-path", STATUS), ("x-sent", "0")]
    assert forwarder.sent[0] == (request, submission_pb2.GetJobStatusResponse)
    assert 19.0 < timeout_s <= 20.0  # the replica's wait, within the caller's deadline
    assert await read(alone) is None
    assert forwarded(b, "GetJobStatus", "answered") == 1
    assert await read(b) is None  # unreachable: answered here
    assert forwarded(b, "GetJobStatus", "unreachable") == 1
    assert await read(b, Context((FORWARDED_BY, "c"))) is None  # passed on once already
    assert await read(a) is None  # the leader answers itself
    assert len(forwarder.calls) == 2


async def test_a_stopped_replica_waits_for_a_leader_no_longer_than_two_lease_rounds(
        table: Table, clock: Clock) -> None:
    forwarder = Passing()
    _, b = await leader_and_follower(table, clock, forwarder)
    await b.stop()
    await call(b, context=Context(remaining_s=60.0))
    timeout_s = forwarder.calls[0][3]
    assert 2 * RENEW_S - 0.5 < timeout_s <= 2 * RENEW_S


async def test_health_notes_only_trouble_with_leadership(table: Table, clock: Clock) -> None:
    standalone = Replicas(lambda fence: cast(JobManager, Manager(fence)), Metrics(),
                          monotonic=Clock())
    assert standalone.note() is None
    a = replica(table, clock, "a")
    assert a.note() == "warning: no replica leads now; calls that change jobs wait for one"
    await a._lease.step()  # type: ignore[union-attr]
    assert a.note() == "note: this replica leads and is recovering its queues; calls wait"
    await asyncio.sleep(0)
    assert a.ready and a.note() is None
    b = replica(table, clock, "b")
    await b.start()
    assert b.note() is None  # follows a known leader


class Held(Manager):
    """A Manager whose recovery waits until it is let go."""

    let_go: asyncio.Event

    async def recover(self) -> None:
        await Held.let_go.wait()


async def test_a_leader_still_recovering_waits_for_its_recovery_never_calls_itself(
        table: Table, clock: Clock) -> None:
    Held.let_go = asyncio.Event()
    forwarder = Passing()
    lease = Lease(table, "a", clock, DURATION_S, RENEW_S, ("a:8082", "a:8081"))
    a = Replicas(lambda fence: cast(JobManager, Held(fence)), Metrics(), monotonic=clock,
                 lease=lease, forwarder=cast(Forwarder, forwarder), settle_s=0)
    await lease.step()  # it leads; its recovery is under way
    runs = Runs()
    waiting = asyncio.ensure_future(call(a, runs=runs))
    await turns(lambda: a.room.calls == 1)
    Held.let_go.set()
    assert await waiting == "ran here"
    assert forwarder.calls == []


async def test_a_standalone_replica_stopped_while_recovering_lets_calls_go_at_once() -> None:
    Held.let_go = asyncio.Event()
    standalone = Replicas(lambda fence: cast(JobManager, Held(fence)), Metrics(),
                          monotonic=Clock())
    starting = asyncio.ensure_future(standalone.start())
    await asyncio.sleep(0)
    await standalone.stop()
    with pytest.raises(NoLeader, match=r"^no leader could take the call within 0\.\d s$"):
        await call(standalone)
    with pytest.raises(asyncio.CancelledError):
        await starting


async def test_a_stopped_standalone_replica_still_runs_the_calls_it_is_given() -> None:
    standalone = Replicas(lambda fence: cast(JobManager, Manager(fence)), Metrics(),
                          monotonic=Clock())
    await standalone.start()
    await standalone.stop()
    assert await call(standalone) == "ran here"


async def test_a_call_with_less_than_a_second_left_still_waits_for_a_leader(
        table: Table, clock: Clock) -> None:
    a = replica(table, clock, "a", wait_s=0.5)
    waiting = asyncio.ensure_future(call(a))
    await turns(lambda: a.room.calls == 1)
    await a.start()
    assert await waiting == "ran here"

"""Interleavings of users and hardware nodes on the real scheduler, checked against a model.

Several users (an admin, two developers, a guest) and two nodes act at once on the real
service, in both modes: they submit with and without idempotency keys, retry keyed
submissions whose answer was cut short, share one submission's flight, cancel a job twice at
once, cancel while nodes take jobs, poll, and take, finish (upload + SUCCESS) and fail jobs.
Some calls carry a deadline short enough to cut the server's store writes: a random fraction
(0.15-1.5) of how long the same kind of call took uncut in this run, so the cut lands inside
the writes in both modes and on any machine (a submit takes ~2 ms on SQLite, ~15 ms on moto).
Every call and its answer is recorded. After each seed the service is left to settle, a
node drains the queue and finishes every job, and the record is checked against the rules.

Why a seeded driver on asyncio rather than hypothesis' RuleBasedStateMachine: the races
under test live in concurrency, several calls in flight at once on the event loop the
server runs on too, while a state machine applies one rule at a time; and shrinking would
replay runs whose outcome depends on timing, so it would shrink to noise. Here each actor
draws its steps from its own ``random.Random`` seeded by (seed, actor): a seed fixes which
steps every actor takes, in which order. Timing still decides the exact interleaving, so the
schedule has "race on purpose" steps that make each known race likely on every seed: keyed
submits cut short and retried at once; a flight whose leader has a 1-4 ms deadline; two or
three cancels fired together; a cut-short assign right after a few submits.

Rules checked after each seed (the name in brackets heads the failure message, followed by
the known defect the broken rule points at, if any):

- [answered] no call is answered INTERNAL in band; a call with a patient deadline (3 s) gets
  an answer, never a gRPC status (so never DEADLINE_EXCEEDED); a call with a deliberately
  short deadline may end DEADLINE_EXCEEDED, and with no other gRPC status.
- [one-node] no job is handed to two nodes: a job id is in at most one AssignNextJob answer.
- [one-job-per-key] every SubmitJob answer for one (token, idempotency key) names the same
  job, and nodes receive at most one job carrying that submission's program; each
  submission's program payload names its token and its key (or a nonce), so the jobs nodes
  receive tell which submission made them. The same holds for a submission without a key.
- [verbatim] a node receives the program byte for byte as it was submitted.
- [settled] after the drain no job a user was given or a node received is QUEUED or RUNNING:
  a job no node received must go back to its queue, never stay RUNNING; none ended TIMEOUT;
  every COMPLETED or FAILED job was received by exactly one node and no CANCELLED job by any.
- [cancel-truth] a CancelJob answered OK leaves the job CANCELLED; a refusal names the job's
  true status: RUNNING only if a node received the job and it did not end CANCELLED, a final
  status only if the job ended so; no other refusal of a user's own job.
- [poll-truth] a status poll or result fetch that sees a final status sees the job's one
  final status.
- [quota] after the drain each token can again have exactly its role's limit of jobs at
  once, and the next submission is refused RESOURCE_EXHAUSTED (small limits set by env).
- [queue-intact] after the drain AssignNextJob answers an empty response, and a fresh
  submission is handed over by the next AssignNextJob.

One exception no server can avoid: an AssignNextJob answer the server completed, that
reached the node after the node's own deadline (the server's deadline runs a transit time
behind the caller's). The server cannot know it was lost; that job stays RUNNING until the
watchdog ends it, so it is exempt from [settled], [cancel-truth] and [quota] (it holds its
slot). Only the server can tell these from assignments it abandoned mid-write, so the test
wraps the execution servicer's AssignNextJob, unchanged, to note the answers it completed;
everything else is judged from outside. A run prints how many answers were lost so.

tests/integration/test_interleavings_together.py runs this driver and these rules with
requeues, heartbeats, named nodes and replicas on (World's knobs after its record).

Seeds: ``DEFAULT_SEEDS`` per mode; ``INTERLEAVING_SEEDS=N`` runs seeds 1..N instead, and
``-k "aws-3"`` one of them. With ``-s`` each seed prints one summary line; a failure names the
seed, the number of calls, each kind of broken rule with the calls that led to its first
instance, and how many more of that kind there were.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import os
import random
import re
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from scheduler.services.execution_service import ExecutionService
from tests.conftest import Running, scheduler_in
from tests.helpers import (
    UPLOAD_HEADERS,
    Clients,
    TokenDatabase,
    gzip_result,
    program,
    submit_request,
)

# Two seeds, each of which takes every kind of step (the ``steps`` each prints: seeds 1 and 4
# never take cancel_known) and meets both refusals, FAILED_PRECONDITION and
# RESOURCE_EXHAUSTED; more with INTERLEAVING_SEEDS.
DEFAULT_SEEDS = (2, 3)
USER_STEPS = 10  # steps each user actor takes per seed
PATIENT_S = 3.0  # a caller that waits this long must be answered
# A cut-short deadline is a random fraction of how long the same kind of call took when
# nobody cut it (the median of this run's patient calls), so it ends inside the server's
# store writes on any machine and in both modes (a submit takes ~2 ms on SQLite, ~15 ms on
# moto; an assign ~1 ms and ~4 ms).
CUT_FRACTION = (0.15, 1.5)
FIRST_GUESS_MS = 3.0  # before a patient call of that kind was timed
FLIGHT_LEADER_MS = (1.0, 4.0)  # long enough to reach the flight, too short to finish it
# How soon a cut-short keyed submit is retried: scans the store write's phases.
RETRY_DELAYS_S = (0.0, 0.0, 0.0005, 0.001, 0.002, 0.004)
NODE_GIVES_UP_AFTER = 5  # INTERNAL answers in a row
SETTLE_S = 0.3  # lets shielded server work of cut-short calls finish before the drain
BACKEND = "emulator"
IDEMPOTENCY = "x-mqc3-idempotency-key"
WAIT = "x-mqc3-wait-ms"
HANDOVER = "x-mqc3-handover"  # which hand-over AssignNextJob made, once the server names it
EXECUTION_METHODS = {"AssignNextJob", "ReportExecutionResult", "RefreshUploadUrl"}
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}

# Small per-role limits make the quota rule cheap to check (a few dozen submits).
LIMITS = {"admin": 12, "developer": 10, "guest": 8}
ENV = {f"SCHEDULER_MAX_CONCURRENT_JOBS_{role.upper()}": str(n) for role, n in LIMITS.items()}
USERS = (("root", "admin"), ("alice", "developer"), ("bob", "developer"), ("gus", "guest"))
NODES = ("node-1", "node-2")

# What each known defect looks like from outside; named in the failure message.
D1 = "defect 1: a keyed retry after a lost answer made a second job"
D1B = "defect 1b?: a job pushed twice into its queue corrupts it"
D2 = "defect 2: callers sharing a flight hang when its leader hangs up"
D3 = "defect 3: a cancel racing a cancel is told the job is RUNNING"
D4 = "defect 4: an assignment whose answer was lost leaves its job RUNNING with no node"


def _seeds() -> list[int]:
    count = os.environ.get("INTERLEAVING_SEEDS")
    return list(range(1, int(count) + 1)) if count else list(DEFAULT_SEEDS)


# --- the record -----------------------------------------------------------------------------
@dataclass
class Call:
    """One call and its answer, as the model sees it."""

    n: int
    actor: str
    method: str
    deadline_ms: float
    started_ms: float
    ended_ms: float = math.inf
    job_id: str = ""  # the job asked about, or the job answered
    tag: str = ""  # the submission (program payload) the call carries or received
    key: str = ""  # idempotency key
    transport: str = ""  # the gRPC status (or HTTP failure) when there was no answer
    code: str = ""  # the in-band error code; "" when accepted
    description: str = ""
    answer: str = ""  # what an accepted answer said, in short
    headers: tuple[tuple[str, str], ...] = ()  # an answer's initial metadata (AssignNextJob)
    retried: str = ""  # the first attempt's failure, when retried as the SDK does

    @property
    def cut_short(self) -> bool:
        return self.deadline_ms < PATIENT_S * 1000

    @property
    def ok(self) -> bool:
        return self.ended_ms < math.inf and not self.transport and not self.code

    def line(self) -> str:
        about = " ".join(part for part in (
            f"key={self.key}" if self.key else "",
            f"tag={self.tag}" if self.tag else "",
            f"job={self.job_id}" if self.job_id else "") if part)
        if self.transport:
            outcome = self.transport
        elif self.code:
            outcome = f"{self.code}: {self.description}"
        else:
            outcome = f"OK {self.answer}".rstrip()
        if self.retried:
            outcome = f"{self.retried}, retried: {outcome}"
        took = self.ended_ms - self.started_ms
        return (f"#{self.n} +{self.started_ms:.0f}ms {self.actor} {self.method} {about} "
                f"(deadline {self.deadline_ms:g} ms) -> {outcome} [{took:.1f} ms]")


@dataclass(frozen=True)
class User:
    name: str
    role: str
    token: str = field(repr=False)  # never printed

    @property
    def limit(self) -> int:
        return LIMITS[self.role]


@dataclass(frozen=True)
class Held:
    """A job a node received and has not finished yet."""

    job_id: str
    upload_url: str


@dataclass(frozen=True)
class Violation:
    rule: str
    text: str
    about: frozenset[str] = frozenset()  # job ids, tags and keys whose calls explain it
    call_n: int = 0  # a call whose predecessors explain it, when nothing else does
    calls: tuple[int, ...] = ()  # further calls that explain it


def _between_s(rng: random.Random, low_ms: float, high_ms: float) -> float:
    """A deadline in a range of milliseconds, log-uniform so each order of magnitude is tried."""
    return math.exp(rng.uniform(math.log(low_ms), math.log(high_ms))) / 1000


def _status_name(status: int) -> str:
    return job_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_")


# --- the world: the service, the users, the nodes and what they know ------------------------
class World:
    """Calls the service on behalf of users and nodes and records every call and answer.

    ``sent``: job id -> tag of each assignment the server did answer (empty when the server
    runs in other processes). The attributes after the record are the knobs and facts of
    tests/integration/test_interleavings_together.py; their defaults are this module's run.
    """

    def __init__(self, clients: Clients, sent: dict[str, str], seed: int,
                 users: list[User]) -> None:
        self.clients = clients
        self.sent = sent
        self.seed = seed
        self.users = users
        self.calls: list[Call] = []
        self.violations: list[Violation] = []  # found while acting (quota, queue)
        self._numbers = itertools.count(1)
        self._t0 = time.monotonic()
        self.owner_of_tag: dict[str, User] = {}
        self.key_of_tag: dict[str, str] = {}
        self.given: defaultdict[str, set[str]] = defaultdict(set)  # tag -> ids users got
        self.owner_of_job: dict[str, User] = {}
        self.tag_of_job: dict[str, str] = {}
        self.received: defaultdict[str, list[str]] = defaultdict(list)  # job id -> nodes
        self.programs: defaultdict[str, list[bytes]] = defaultdict(list)  # as nodes got them
        self.held: list[Held] = []
        self.final: dict[str, str] = {}  # job id -> status after the drain
        self.took_ms: defaultdict[str, list[float]] = defaultdict(list)  # patient calls
        self.handovers: defaultdict[str, list[str]] = defaultdict(list)  # x-mqc3-handover
        self.user_steps = USER_STEPS
        self.patient_s = PATIENT_S  # how long a patient call waits (longer across failovers)
        self.sdk_retries = False  # retry UNAVAILABLE and DEADLINE_EXCEEDED once, as the SDK
        self.job_timeout_s = 60  # each submission's settings.timeout
        self.requeues: dict[str, int] = {}  # job id -> times queued again (the store's word)
        self.timeouts_expected = False  # nodes that forget jobs: TIMEOUT is an end like others

    def cut_s(self, kind: str, rng: random.Random) -> float:
        """A deadline that cuts a ``kind`` call short, most likely inside its store write."""
        timed = self.took_ms[kind][-40:]
        typical_ms = statistics.median(timed) if len(timed) >= 3 else FIRST_GUESS_MS
        return max(0.2, rng.uniform(*CUT_FRACTION) * typical_ms) / 1000

    def _timed(self, kind: str, call: Call) -> None:
        if call.ok and not call.cut_short:
            self.took_ms[kind].append(call.ended_ms - call.started_ms)

    def _now_ms(self) -> float:
        return (time.monotonic() - self._t0) * 1000

    def new_tag(self, user: User, key: str = "") -> str:
        """A submission's program payload: names the token's user and the key or a nonce."""
        n = next(self._numbers)
        tag = f"s{self.seed}/{user.name}/" + (f"key={key}" if key else f"nonce={n}")
        self.owner_of_tag[tag] = user
        if key:
            self.key_of_tag[tag] = key
        return tag

    def new_key(self) -> str:
        return f"k{self.seed}-{next(self._numbers)}"

    async def rpc(self, actor: str, method: str, request: Any, deadline_s: float,
                  metadata: tuple[tuple[str, str], ...] = (), job_id: str = "", tag: str = "",
                  key: str = "") -> tuple[Call, Any]:
        """Make one call, record it and its answer; (call, response or None)."""
        if deadline_s >= PATIENT_S:
            deadline_s = max(deadline_s, self.patient_s)
        call = Call(next(self._numbers), actor, method, deadline_s * 1000, self._now_ms(),
                    job_id=job_id, tag=tag, key=key)
        self.calls.append(call)
        response = None
        for attempt in (1, 2):
            try:
                pending = getattr(self.stub(method), method)(request, timeout=deadline_s,
                                                             metadata=metadata or None)
                response = await pending
                if method == "AssignNextJob":
                    call.headers = tuple(await pending.initial_metadata() or ())
            except grpc.aio.AioRpcError as exc:
                call.transport = exc.code().name
                if attempt == 1 and self._retried(call):
                    call.retried, call.transport = call.transport, ""
                    continue
            else:
                call.code, call.description = response.error.code, response.error.description
            break
        call.ended_ms = self._now_ms()
        return call, response

    def excused(self, call: Call) -> bool:
        """Whether a call may end with no answer for a reason of the run (none here)."""
        return False

    def stub(self, method: str) -> Any:
        return self.clients.execution if method in EXECUTION_METHODS else self.clients.submission

    def _retried(self, call: Call) -> bool:
        """Whether the SDK would try a failed call once more, at once (with the same
        deadline: a call cut short on purpose is not retried after its deadline)."""
        return self.sdk_retries and (call.transport == "UNAVAILABLE" or (
            call.transport == "DEADLINE_EXCEEDED" and not call.cut_short))

    # --- users ------------------------------------------------------------------------
    async def submit(self, user: User, tag: str, deadline_s: float) -> tuple[Call, str]:
        key = self.key_of_tag.get(tag, "")
        call, response = await self.rpc(
            user.name, "SubmitJob",
            submit_request(user.token, BACKEND, payload=tag.encode(), timeout_s=self.job_timeout_s),
            deadline_s, ((IDEMPOTENCY, key),) if key else (), tag=tag, key=key)
        if not call.ok:
            return call, ""
        if not key:  # a keyed retry may be answered from memory: it says nothing of writes
            self._timed("SubmitJob", call)
        call.job_id = job_id = response.job_id
        self.given[tag].add(job_id)
        self.owner_of_job.setdefault(job_id, user)
        self.tag_of_job.setdefault(job_id, tag)
        return call, job_id

    async def cancel(self, user: User, job_id: str, deadline_s: float) -> Call:
        request = pb.CancelJobRequest(token=user.token, job_id=job_id)
        call, _ = await self.rpc(user.name, "CancelJob", request, deadline_s, job_id=job_id)
        self._timed("CancelJob", call)
        return call

    async def poll(self, user: User, job_id: str, method: str = "GetJobStatus") -> Call:
        build = pb.GetJobStatusRequest if method == "GetJobStatus" else pb.GetJobResultRequest
        call, response = await self.rpc(user.name, method, build(token=user.token, job_id=job_id),
                                        PATIENT_S, job_id=job_id)
        if call.ok:
            call.answer = _status_name(response.status)
        return call

    def lost_in_transit(self, job_id: str) -> bool:
        """The server answered an assignment of this job, but no node got the answer."""
        return job_id in self.sent and job_id not in self.received

    def known_job(self, user: User, rng: random.Random) -> str:
        """One of the user's jobs, or "" when it has none yet."""
        mine = sorted(j for j, owner in self.owner_of_job.items() if owner is user)
        return rng.choice(mine) if mine else ""

    # --- nodes ------------------------------------------------------------------------
    async def assign(self, node: str, deadline_s: float,
                     wait_ms: int = 0) -> tuple[Call, Held | None]:
        call, response = await self.rpc(
            node, "AssignNextJob", execution_pb2.AssignNextJobRequest(backend=BACKEND),
            deadline_s, (*self.node_metadata(node), *(((WAIT, str(wait_ms)),) if wait_ms else ())))
        if not call.ok or not response.job_id:
            return call, None
        if not wait_ms:  # a long poll's time says nothing of the store
            self._timed("AssignNextJob", call)
        job_id, tag = response.job_id, response.job.program.circuit.decode(errors="replace")
        call.job_id, call.tag, call.answer = job_id, tag, "a job"
        self.received[job_id].append(node)
        self.handovers[job_id].append(dict(call.headers).get(HANDOVER, ""))
        self.programs[job_id].append(response.job.program.SerializeToString())
        self.tag_of_job.setdefault(job_id, tag)
        owner = self.owner_of_tag.get(tag)
        if owner is not None:
            self.owner_of_job.setdefault(job_id, owner)
        held = Held(job_id, response.upload_target.upload_url)
        self.held.append(held)
        return call, held

    def node_metadata(self, node: str) -> tuple[tuple[str, str], ...]:
        """What a node sends with each call besides the request (nothing: anonymous)."""
        return ()

    async def finish(self, node: str, held: Held, rng: random.Random) -> None:
        """Upload a result and report SUCCESS, or report FAILURE; now and then twice."""
        success = rng.random() < 0.75 and await self._upload(node, held)
        status = (execution_pb2.EXECUTION_STATUS_SUCCESS if success
                  else execution_pb2.EXECUTION_STATUS_FAILURE)
        request = execution_pb2.ReportExecutionResultRequest(job_id=held.job_id, status=status)
        for _ in range(2 if rng.random() < 0.1 else 1):  # the same report twice is fine
            await self.rpc(node, "ReportExecutionResult", request, PATIENT_S, job_id=held.job_id)

    async def _upload(self, node: str, held: Held) -> bool:
        call = Call(next(self._numbers), node, "PUT result", PATIENT_S * 1000, self._now_ms(),
                    job_id=held.job_id)
        self.calls.append(call)
        try:
            answer = await asyncio.to_thread(
                requests.put, held.upload_url, data=gzip_result(b"\x0a\x01r"),
                headers=UPLOAD_HEADERS, timeout=PATIENT_S)
            if answer.status_code != 200:
                call.transport = f"HTTP {answer.status_code}"
        except requests.RequestException as exc:
            call.transport = type(exc).__name__
        call.ended_ms = self._now_ms()
        return not call.transport

    async def finish_all(self, node: str, rng: random.Random) -> None:
        while self.held:
            await self.finish(node, self.held.pop(0), rng)


# --- the users' steps -----------------------------------------------------------------------
Step = Callable[[World, User, random.Random], Awaitable[None]]


async def submit_plain(world: World, user: User, rng: random.Random) -> None:
    await world.submit(user, world.new_tag(user), PATIENT_S)


async def submit_cut_short(world: World, user: User, rng: random.Random) -> None:
    """The answer may be lost; the job may still exist (nodes will tell)."""
    await world.submit(user, world.new_tag(user), world.cut_s("SubmitJob", rng))


async def retry_after_cut(world: World, user: User, rng: random.Random) -> None:
    """Defect 1's race: keyed submits cut short while the job is stored, each retried at
    once; a few keys at a time, as a client library retrying several submissions would."""
    async def one(tag: str, deadline_s: float, delay_s: float, retries: int) -> None:
        await world.submit(user, tag, deadline_s)
        await asyncio.sleep(delay_s)
        for _ in range(retries):
            await world.submit(user, tag, PATIENT_S)

    await asyncio.gather(*(
        one(world.new_tag(user, world.new_key()), world.cut_s("SubmitJob", rng),
            rng.choice(RETRY_DELAYS_S), rng.choice((1, 2)))
        for _ in range(rng.randint(2, 4))))


async def shared_flight(world: World, user: User, rng: random.Random) -> None:
    """Defect 2's race: callers share a keyed submission whose leader hangs up."""
    tag = world.new_tag(user, world.new_key())
    leader = asyncio.create_task(world.submit(user, tag, _between_s(rng, *FLIGHT_LEADER_MS)))
    await asyncio.sleep(rng.choice((0.0, 0.0002, 0.0005)))  # let the leader start first
    followers = [world.submit(user, tag, PATIENT_S) for _ in range(rng.randint(1, 3))]
    await asyncio.gather(leader, *followers)


async def keyed_retry(world: World, user: User, rng: random.Random) -> None:
    """A plain retry with a key: both answers must name one job."""
    tag = world.new_tag(user, world.new_key())
    await world.submit(user, tag, PATIENT_S)
    await world.submit(user, tag, PATIENT_S)


async def double_cancel(world: World, user: User, rng: random.Random) -> None:
    """Defect 3's race: two (or three) cancels of a queued job at once, nodes taking jobs."""
    _, job_id = await world.submit(user, world.new_tag(user), PATIENT_S)
    if job_id:
        cancels = rng.choice((2, 2, 3))
        await asyncio.gather(*(world.cancel(user, job_id, PATIENT_S) for _ in range(cancels)))
        await world.poll(user, job_id)


async def lost_assignment(world: World, user: User, rng: random.Random) -> None:
    """Defect 4's race: a node's assign cut short while its job is being marked RUNNING."""
    # A few at once: the nodes' long polls take one, another is likely still queued.
    await asyncio.gather(*(world.submit(user, world.new_tag(user), PATIENT_S)
                           for _ in range(rng.randint(1, 3))))
    await world.assign(f"{user.name}-node", world.cut_s("AssignNextJob", rng))


async def cancel_known(world: World, user: User, rng: random.Random) -> None:
    """A cancel racing the nodes, sometimes cut short itself."""
    job_id = world.known_job(user, rng)
    if job_id:
        cut = rng.random() < 0.4
        await world.cancel(user, job_id, world.cut_s("CancelJob", rng) if cut else PATIENT_S)


async def poll_known(world: World, user: User, rng: random.Random) -> None:
    job_id = world.known_job(user, rng)
    if job_id:
        await world.poll(user, job_id, rng.choice(("GetJobStatus", "GetJobStatus",
                                                   "GetJobResult")))


STEPS: tuple[tuple[Step, int], ...] = (
    (submit_plain, 2),
    (submit_cut_short, 1),
    (retry_after_cut, 4),
    (shared_flight, 3),
    (keyed_retry, 1),
    (double_cancel, 3),
    (lost_assignment, 3),
    (cancel_known, 1),
    (poll_known, 2),
)


# --- the actors -----------------------------------------------------------------------------
async def user_actor(world: World, user: User) -> Counter[str]:
    schedule = random.Random(f"{world.seed}/{user.name}")
    steps, weights = zip(*STEPS, strict=True)
    taken: Counter[str] = Counter()
    for _ in range(world.user_steps):
        step = schedule.choices(steps, weights)[0]
        # Each step draws from its own generator: what the step found (a job to cancel or
        # not) changes its draws, but never the steps that follow.
        rng = random.Random(schedule.getrandbits(64))
        taken[step.__name__] += 1
        await step(world, user, rng)
        await asyncio.sleep(schedule.uniform(0, 0.01))
    return taken


async def node_actor(world: World, node: str, users_done: asyncio.Event) -> None:
    """Takes jobs (long polls, and now and then a cut-short assign) and finishes held jobs."""
    schedule = random.Random(f"{world.seed}/{node}")
    failures = 0  # a node answered INTERNAL again and again stops asking (and logging)
    while not users_done.is_set() and failures < NODE_GIVES_UP_AFTER:
        rng = random.Random(schedule.getrandbits(64))  # what a turn does may depend on timing
        if rng.random() < 0.25:
            await asyncio.sleep(rng.uniform(0.02, 0.1))  # busy elsewhere: jobs stay queued
        if rng.random() < 0.15:
            call, _ = await world.assign(node, world.cut_s("AssignNextJob", rng))
        else:
            call, _ = await world.assign(node, PATIENT_S, rng.choice((0, 50, 150)))
        failures = failures + 1 if call.code == "INTERNAL" else 0
        await asyncio.sleep(rng.uniform(0, 0.02))  # a busy node leaves jobs queued a while
        while world.held and rng.random() < 0.6:
            await world.finish(node, world.held.pop(0), rng)
    await world.finish_all(node, schedule)


async def act(world: World) -> Counter[str]:
    users_done = asyncio.Event()
    nodes = [asyncio.create_task(node_actor(world, node, users_done)) for node in NODES]
    try:
        taken = await asyncio.gather(*(user_actor(world, user) for user in world.users))
    finally:
        users_done.set()
        await asyncio.gather(*nodes)
    return sum(taken, Counter())


# --- after the run: settle, drain, and the checks that need the service -----------------------
async def settle_and_drain(world: World) -> None:
    """Let cut-short calls' server work end, then take and finish every queued job."""
    await asyncio.sleep(SETTLE_S)
    rng = random.Random(f"{world.seed}/drain")
    failures = 0
    for _ in range(500):
        call, held = await world.assign("drain", PATIENT_S)
        if not call.ok:
            failures += 1  # a broken queue answers INTERNAL for ever: give up after a few
            if failures >= 3:
                break
        elif held is None:
            break
    await world.finish_all("drain", rng)


async def check_quotas(world: World) -> None:
    """[quota] Each token can again have exactly its limit of jobs at once."""
    for user in world.users:
        accepted: list[str] = []
        refusal: Call | None = None
        # A job whose assignment answer was lost in transit holds its slot until the watchdog.
        expected = user.limit - sum(1 for job_id, tag in world.sent.items()
                                    if world.lost_in_transit(job_id)
                                    and world.owner_of_tag.get(tag) is user)
        for _ in range(expected + 1):
            call, job_id = await world.submit(user, world.new_tag(user), PATIENT_S)
            if not call.ok:
                refusal = call
                break
            accepted.append(job_id)
        for job_id in accepted:
            await world.cancel(user, job_id, PATIENT_S)
        if len(accepted) == expected and refusal is not None \
                and refusal.code == "RESOURCE_EXHAUSTED":
            continue
        world.violations.append(Violation(
            "quota",
            f"after the drain {user.name} ({user.role}, limit {user.limit}, {expected} free) "
            f"could have {len(accepted)} jobs at once, then: "
            f"{refusal.line() if refusal else 'no refusal'}"
            f" (a slot held by a job no node runs: {D4}; or counted twice: {D1B})",
            call_n=refusal.n if refusal else 0))


async def check_queue(world: World) -> None:
    """[queue-intact] The drained queue answers empty; a fresh job is handed over next."""
    rng = random.Random(f"{world.seed}/queue")
    call, held = await world.assign("drain", PATIENT_S)
    if not call.ok or held is not None:
        world.violations.append(Violation(
            "queue-intact", f"after the drain AssignNextJob did not answer empty: {call.line()}",
            frozenset({held.job_id}) if held else frozenset(), call.n))
    user = world.users[0]
    _, job_id = await world.submit(user, world.new_tag(user), PATIENT_S)
    call, held = await world.assign("drain", PATIENT_S)
    if not job_id or held is None or held.job_id != job_id:
        world.violations.append(Violation(
            "queue-intact", f"a fresh submission ({job_id or 'refused'}) was not handed over "
            f"by the next AssignNextJob: {call.line()}", frozenset({job_id}), call.n))
    await world.finish_all("drain", rng)


async def collect_final(world: World) -> None:
    """Each known job's status after the drain, asked of its owner (the admin if unknown)."""
    admin = next(u for u in world.users if u.role == "admin")
    for job_id in sorted(set(world.owner_of_job) | set(world.received) | set(world.sent)):
        owner = world.owner_of_job.get(job_id) or world.owner_of_tag.get(world.sent.get(job_id, ""))
        call = await world.poll(owner or admin, job_id)
        world.final[job_id] = call.answer if call.ok else f"unknown ({call.line()})"


# --- the rules over the record ---------------------------------------------------------------
def broken_rules(world: World) -> list[Violation]:
    return [*_answered(world), *_one_node(world), *_one_job_per_key(world), *_verbatim(world),
            *_settled(world), *_cancel_truth(world), *_poll_truth(world)]


def _answered(world: World) -> Iterator[Violation]:
    broken_at = 0  # the first AssignNextJob answered INTERNAL: the queue is broken from then
    for call in world.calls:
        if call.code == "INTERNAL":
            # The job pushed twice may be one whose id no caller ever got (its first copy
            # handed to an assign cut short), so the calls just before are all there is.
            if call.method == "AssignNextJob" and not broken_at:
                broken_at = call.n
            hint = f" ({D1B})" if broken_at else ""
            yield Violation("answered", f"answered INTERNAL{hint}: {call.line()}",
                            frozenset({call.job_id, call.tag} - {""}), call.n)
        elif call.transport and not (call.cut_short and call.transport == "DEADLINE_EXCEEDED") \
                and not world.excused(call):
            hint = f" ({D2})" if call.method == "SubmitJob" and call.key else ""
            yield Violation("answered", f"a patient call got no answer{hint}: {call.line()}",
                            frozenset({call.job_id, call.tag} - {""}), call.n)


def _one_node(world: World) -> Iterator[Violation]:
    """Each hand-over reaches one node: a job reaches a further node only after it was
    queued again (as many times as the store's record counts), and no hand-over number
    the server named reaches two nodes."""
    for job_id, nodes in world.received.items():
        requeues = world.requeues.get(job_id, 0)
        numbers = [number for number in world.handovers[job_id] if number]
        again = f" but was queued again only {requeues} times" if requeues else ""
        if len(nodes) > 1 + requeues:
            yield Violation("one-node", f"job {job_id} was handed to {len(nodes)} nodes"
                            f"{again}: {nodes}", frozenset({job_id}))
        elif len(set(numbers)) < len(numbers):
            yield Violation("one-node", f"job {job_id} was handed to {nodes} under hand-over "
                            f"numbers {numbers}: one hand-over reached two nodes",
                            frozenset({job_id}))


def _one_job_per_key(world: World) -> Iterator[Violation]:
    # The SDK retries a submission whose answer it lost, and without a key the retry is a
    # new submission (the SDK sends no key of its own): only a key makes it one.
    retried = {c.tag for c in world.calls if c.method == "SubmitJob" and c.retried}
    for tag in world.owner_of_tag:
        jobs = world.given[tag] | {j for j in world.received if world.tag_of_job.get(j) == tag}
        if len(jobs) > 1 and not (tag in retried and tag not in world.key_of_tag):
            key = world.key_of_tag.get(tag, "")
            what = f"key {key} of {world.owner_of_tag[tag].name}" if key else f"submission {tag}"
            yield Violation(
                "one-job-per-key",
                f"{what} made {len(jobs)} jobs ({D1}): users were given "
                f"{sorted(world.given[tag])}, nodes received "
                f"{sorted(j for j in jobs if j in world.received)}",
                frozenset({tag, key, *jobs} - {""}))


def _verbatim(world: World) -> Iterator[Violation]:
    for job_id, programs in world.programs.items():
        tag = world.tag_of_job.get(job_id, "")
        expected = program(tag.encode()).SerializeToString()
        if tag not in world.owner_of_tag or any(p != expected for p in programs):
            yield Violation("verbatim", f"job {job_id} reached a node with a program that "
                            f"is not the one submitted (payload {tag!r})", frozenset({job_id}))


def _settled(world: World) -> Iterator[Violation]:
    for job_id, status in sorted(world.final.items()):
        nodes = world.received.get(job_id, [])
        requeued = world.requeues.get(job_id, 0) > 0  # a later node may have run it
        problem = ""
        if status == "RUNNING" and world.lost_in_transit(job_id):
            continue  # its answer was sent, then lost: only the watchdog can end it
        if status == "RUNNING" and not nodes:
            problem = f"is RUNNING but no node ever received it ({D4})"
        elif status in ("QUEUED", "RUNNING") or status not in FINAL:
            problem = f"is still {status} after the drain (received by {nodes or 'no node'})"
        elif status == "TIMEOUT" and not world.timeouts_expected:
            problem = f"ended TIMEOUT (received by {nodes or 'no node'})"
        elif status in ("COMPLETED", "FAILED") and not nodes:
            problem = f"ended {status} but no node received it"
        elif status in ("COMPLETED", "FAILED") and len(nodes) > 1 and not requeued:
            problem = f"ended {status} but was received by {len(nodes)} nodes"
        elif status == "CANCELLED" and nodes and not requeued:
            problem = f"ended CANCELLED although node(s) {nodes} received it"
        if problem:
            yield Violation("settled", f"job {job_id} {problem}", frozenset({job_id}),
                            calls=_cut_assigns_after(world, job_id) if not nodes else ())


def _cut_assigns_after(world: World, job_id: str, most: int = 4) -> tuple[int, ...]:
    """The cut-short AssignNextJob calls after the job was submitted: one may have lost it."""
    submitted = min((c.started_ms for c in world.calls
                     if c.method == "SubmitJob" and c.job_id == job_id), default=0.0)
    return tuple(c.n for c in world.calls if c.method == "AssignNextJob" and c.cut_short
                 and c.transport and c.started_ms >= submitted)[:most]


_REFUSED_AS = re.compile(r" is ([A-Z]+) and can no longer be cancelled")


def _cancel_truth(world: World) -> Iterator[Violation]:
    for call in world.calls:
        if call.method != "CancelJob" or call.transport:
            continue
        final = world.final.get(call.job_id, "unknown")
        received = bool(world.received.get(call.job_id))
        claimed = _REFUSED_AS.search(call.description)
        problem = ""
        if call.ok:
            problem = "" if final == "CANCELLED" else f"was answered OK but the job ended {final}"
        elif call.code == "RESOURCE_EXHAUSTED":
            problem = ""  # the service's own load limit; says nothing about the job
        elif call.code != "FAILED_PRECONDITION" or claimed is None:
            problem = f"refused a user's own job with {call.code}; it ended {final}"
        elif claimed[1] == "RUNNING" and final == "CANCELLED" \
                and not (received and world.requeues.get(call.job_id)):  # RUNNING, then lost
            problem = f"said RUNNING, but no node ever got the job and it ended CANCELLED ({D3})"
        elif claimed[1] == "RUNNING" and not received and call.job_id not in world.sent:
            problem = f"said RUNNING, but no node ever received the job ({D4})"
        elif claimed[1] != "RUNNING" and claimed[1] != final:
            problem = f"said {claimed[1]}, but the job ended {final}"
        if problem:
            yield Violation("cancel-truth", f"CancelJob #{call.n} {problem}: {call.line()}",
                            frozenset({call.job_id}))


def _poll_truth(world: World) -> Iterator[Violation]:
    for call in world.calls:
        if call.method in ("GetJobStatus", "GetJobResult") and call.ok \
                and call.answer in FINAL and call.answer != world.final.get(call.job_id):
            yield Violation("poll-truth", f"{call.method} #{call.n} saw {call.answer} but the "
                            f"job ended {world.final.get(call.job_id)}", frozenset({call.job_id}))


# --- the report -------------------------------------------------------------------------------
def _history(world: World, violation: Violation, limit: int) -> list[str]:
    """The calls that explain a violation: those about its jobs, tags and keys, those it
    names, else the ones just before the call it is about."""
    about, named = violation.about, set(violation.calls)
    lines = [c for c in world.calls if about & {c.job_id, c.tag, c.key} or c.n in named]
    if not lines and violation.call_n:
        lines = [c for c in world.calls if violation.call_n - limit < c.n <= violation.call_n]
    return ["      " + c.line() for c in lines[-limit:]]


def _kind(violation: Violation) -> str:
    """The rule and, when it names one, the known defect: one group of the report."""
    found = re.search(r"\((defect [^:]+):", violation.text)
    return f"[{violation.rule}]" + (f" {found[1]}" if found else "")


def report(world: World, mode: str, violations: list[Violation]) -> str:
    """The first broken rule of each kind, with the calls that led to it, and counts."""
    groups: dict[str, list[Violation]] = {}
    for violation in violations:
        groups.setdefault(_kind(violation), []).append(violation)
    shown = [f"seed {world.seed} ({mode}): {summary(world)}; {len(violations)} broken, "
             f"{', '.join(f'{kind} x{len(found)}' for kind, found in groups.items())}"]
    for number, (kind, found) in enumerate(groups.items()):
        first = found[0]
        head = "first broken" if number == 0 else "also broken"
        shown += [f"{head}: [{first.rule}] {first.text}", "    calls that led to it:",
                  *_history(world, first, 24 if number == 0 else 10)]
        if len(found) > 1:
            shown.append(f"    ({len(found) - 1} more {kind})")
    return "\n".join(shown)


def summary(world: World) -> str:
    cut = sum(1 for c in world.calls if c.cut_short)
    lost = sum(1 for job_id in world.sent if world.lost_in_transit(job_id))
    return (f"{len(world.calls)} calls ({cut} cut short), {len(world.final)} jobs, "
            f"{len(world.received)} handed to nodes, {lost} answers lost in transit")


# --- the test -----------------------------------------------------------------------------------
def _users(running: Running) -> list[User]:
    return [User(name, role, running.token(name, role)) for name, role in USERS]


@dataclass(frozen=True)
class Service:
    """The scheduler under test, and what the test notes at its execution servicer."""

    running: Running
    sent: dict[str, str]  # job id -> tag, for each AssignNextJob answer the server completed


def _noting_sent_answers(assign: Any, sent: dict[str, str]) -> Any:
    """AssignNextJob as it is, noting each job whose answer the server completed.

    The one fact no caller can see: an answer the server sent, that arrived after the
    caller's own deadline (the server's deadline runs a transit time behind the caller's).
    No server can know such an answer was lost; the watchdog ends that job. Only this tells
    those few from assignments the server abandoned, which must go back to the queue.
    """
    @functools.wraps(assign)
    async def noted(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = await assign(self, request, context)
        if response.job_id:
            job_id, tag = response.job_id, response.job.program.circuit.decode(errors="replace")

            def note(done: grpc.aio.ServicerContext) -> None:
                if not done.cancelled():  # the server sent the answer
                    sent[job_id] = tag

            context.add_done_callback(note)
        return response

    return noted


@pytest.fixture
async def service(mode: str, tmp_path: Path, request: pytest.FixtureRequest,
                  token_database: TokenDatabase,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    """A fresh scheduler per seed, in each mode, with small per-role job limits."""
    sent: dict[str, str] = {}
    # Before the start: the servicer's methods are bound when the server registers them.
    monkeypatch.setattr(ExecutionService, "AssignNextJob",
                        _noting_sent_answers(ExecutionService.AssignNextJob, sent))
    async with scheduler_in(mode, tmp_path, request, token_database, env=ENV) as running:
        yield Service(running, sent)


@pytest.mark.parametrize("seed", _seeds())
async def test_interleavings_keep_the_jobs_rules(mode: str, seed: int, service: Service) -> None:
    started = time.monotonic()
    world = World(service.running.clients, service.sent, seed, _users(service.running))
    steps = await act(world)
    await settle_and_drain(world)
    await check_quotas(world)
    await check_queue(world)
    await collect_final(world)
    violations = broken_rules(world) + world.violations
    kinds = Counter(_kind(v) for v in violations)
    refused = Counter(c.code for c in world.calls if c.code)
    print(f"\ninterleavings seed {seed} ({mode}): {summary(world)}; "
          f"{time.monotonic() - started:.1f} s; steps {dict(steps)}; refused {dict(refused)}; "
          f"broken {dict(kinds)}")
    if violations:
        # The report says all there is; a traceback would only repeat the test's source.
        pytest.fail(report(world, mode, violations), pytrace=False)

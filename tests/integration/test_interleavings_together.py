"""The interleavings of tests/integration/test_interleavings.py with a job's later life on.

The same users, steps, record and rules as that module (its driver is reused, not copied),
with what the base run leaves off (issue 27): requeues on (``SCHEDULER_MAX_REQUEUES`` 1 and
2) with a short job timeout and grace, heartbeats with a short timeout, and nodes of every
kind. Named nodes send ``x-mqc3-node-id``, anonymous ones send none; every node echoes the
hand-over its assignment named (``x-mqc3-handover``, when the server names one) and, in its
report, when it started the run (compile and execution start: the time it received the job).
Each job a node receives is handled one way, drawn per receipt:

- prompt: upload, report SUCCESS (or FAILURE), now and then twice;
- beat, then prompt; or beat a few times, then go quiet (lost to the heartbeat timeout);
- forget: never report (lost to the job's timeout);
- late: go quiet past the job's timeout and grace, then renew the URL, upload through the
  old URL and report, once or twice;
- infrastructure failure: report FAILURE with ``error.code`` UNAVAILABLE (queued again),
  sometimes twice at once, and later upload and report SUCCESS through the old hand-over.

Every result a node uploads names the node and its receipt of the job, so the downloaded
result and the final status can be traced to the hand-over that made them. In AWS mode two
replicas run as processes on moto behind one address (the TCP proxies of
tests/integration/test_replicas.py); in the middle of a seed the leader is killed (SIGKILL,
then started again), or in the other variant deposed while it sleeps (SIGSTOP past its lease
until the other replica leads, then SIGCONT). Users and nodes call as the SDK does: a patient
call waits long enough for a failover and is tried once more after UNAVAILABLE.

Among the random calls are also issue 30's (tests/integration/interleavings_turns.py): an
operator books the backend for windows of a fraction of a second, for some of the users
or for maintenance, and cancels bookings; users open sessions of a few seconds, name them
in ``x-mqc3-session`` or not, list and close them, and an admin ends others'; a fifth
user has a budget of a few jobs' shots (SCHEDULER_BUDGETS_FILE). Before the drain the
clients stop naming sessions and every window not over is cancelled; during it the
budgeted user cancels the jobs its spent budget holds back; after it an admin ends the
sessions still open.

After the drain (nodes take and finish every job until every job is final and every late
node is done) the base rules are checked, with the store's count of each job's requeues,
those of the bookings, sessions and budgets ([window], [session-bound], [budget]: see that
module), and these:

- [settled] every accepted job is final (TIMEOUT too: nodes forget jobs on purpose);
- [one-node] a job reaches a further node only after it was queued again;
- [stale-hand-over] a report or upload of a hand-over that was superseded never becomes the
  job's outcome or result: a COMPLETED job's result is the one its last receipt uploaded,
  a COMPLETED or FAILED job's last receipt reported that outcome, no superseded receipt's
  outcome report was accepted before the job was handed over again, and a receipt whose
  node reported promptly (within the job's timeout, with no failover meanwhile) was not
  refused (a stale call took the job from it).

Run length: by default one seed per variant (two per mode), for CI. ``INTERLEAVING_SECONDS``
runs seeds one after another for that many seconds per mode (half for each variant), e.g.
``INTERLEAVING_SECONDS=600`` for ten minutes. ``-s`` prints one line per seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf.timestamp_pb2 import Timestamp

from job_manager import listing
from job_manager.stores.dynamodb_job_store import DynamoDbJobStore
from job_manager.stores.job_store import JobStore
from job_manager.stores.sqlite_job_store import SqliteJobStore
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from pb.mqc3_scheduler.extension.v1 import (
    jobs_pb2,
    jobs_pb2_grpc,
    nodes_pb2,
    nodes_pb2_grpc,
    reservations_pb2_grpc,
)
from pb.mqc3_scheduler.extension.v1 import reservations_pb2 as rpb
from scheduler.services.execution_service import ExecutionService
from tests.conftest import scheduler_in
from tests.helpers import (
    UPLOAD_HEADERS,
    Clients,
    TokenDatabase,
    aws_client,
    gzip_result,
    submit_request,
)
from tests.integration import interleavings_turns as turns
from tests.integration import test_interleavings as base
from tests.integration.processes import Deployment, aws_deployment
from tests.integration.test_replicas import Replicas, replicas_behind_proxies

JOB_TIMEOUT_S = 2  # every job's settings.timeout: a forgotten job is lost soon
REPORT_GRACE_S = 0.5
HEARTBEAT_TIMEOUT_S = 0.8
# A failover: the lease's lapse (2 s, tests/integration/processes.py) and a recovery.
PATIENT_ACROSS_FAILOVER_S = 12.0
NODES = (("lab-1", True), ("lab-2", True), ("anon-1", False), ("anon-2", False))
NODE_ID = "x-mqc3-node-id"
UNAVAILABLE = "UNAVAILABLE"  # a node's error.code for its backend's failure: queued again
# How a node handles a job it received, with weights (see the module's docstring).
BEHAVIOURS = (("prompt", 40), ("beat-then-prompt", 10), ("beat-then-quiet", 10),
              ("forget", 10), ("late", 15), ("unavailable", 15))
# More steps than the base run: its users are done within a second, and nodes that come
# back late should meet jobs still being handed over.
USER_STEPS = 30
DRAIN_BOUND_S = 60.0  # every job is final well before: three hand-overs' timeouts and more
# (variant, SCHEDULER_MAX_REQUEUES): standalone runs in this process; AWS runs two replica
# processes, disturbed once per seed.
VARIANTS = {"standalone": (("requeues-1", 1), ("requeues-2", 2)),
            "aws": (("kill", 1), ("deposal", 2))}


def _env(max_requeues: int, budgets: Path) -> dict[str, str]:
    return {**base.ENV, "SCHEDULER_MAX_REQUEUES": str(max_requeues),
            "SCHEDULER_REPORT_GRACE_S": str(REPORT_GRACE_S),
            "SCHEDULER_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
            "SCHEDULER_BUDGETS_FILE": str(turns.write_budgets(budgets))}


def _run_s() -> float:
    """Seconds each variant runs for; 0: one seed (the default, for CI)."""
    return float(os.environ.get("INTERLEAVING_SECONDS", "0")) / 2


# --- the world, with nodes of every kind -----------------------------------------------------
@dataclass(frozen=True)
class Receipt(base.Held):
    """A job as one node received it: one hand-over seen from outside."""

    node: str
    number: int  # this job's n-th receipt (0 first): names the result the node uploads
    handover: str  # x-mqc3-handover as the server named it; "" when it named none
    received_ms: float  # on the record's clock
    started: Timestamp  # when the node began the run, as its report says
    # When the node asked for it: the server's hand-over (dequeued_at, from which the job's
    # timeout runs) lies between this and received_ms, which a slow answer keeps apart.
    asked_ms: float = 0.0

    @property
    def result(self) -> bytes:
        return f"{self.node}#{self.job_id}#{self.number}".encode()


@dataclass
class Report:
    """A report a node sent for one of its receipts."""

    receipt: Receipt
    outcome: str  # SUCCESS or FAILURE
    code: str  # the error.code the node sent (UNAVAILABLE: its backend's failure)
    prompt: bool  # sent as soon as the node was done, not held back
    call: base.Call


@dataclass
class Disturbance:
    """A failover window on the record's clock: calls inside it may legitimately lose."""

    what: str
    started_ms: float
    ended_ms: float = float("inf")


class Together(turns.TurnsWorld):
    """The base world with named and anonymous nodes that beat, forget, come back late and
    fail for their backend's reasons, a record of every receipt and report, and bookings,
    sessions and budgets (tests/integration/interleavings_turns.py)."""

    def __init__(self, clients: Clients, nodes: nodes_pb2_grpc.NodeServiceStub,
                 sent: dict[str, str], seed: int, users: list[base.User],
                 extension: grpc.aio.Channel) -> None:
        super().__init__(clients, sent, seed, users, extension)
        self.nodes = nodes
        self.named = {name for name, named in NODES if named}
        self.receipts: dict[str, list[Receipt]] = {}
        self.reports: list[Report] = []
        self.results: dict[str, bytes | str] = {}  # job id -> downloaded result, or why not
        self.disturbances: list[Disturbance] = []
        self.later: set[asyncio.Task[None]] = set()  # late nodes still to come back
        self.behaviours: Counter[str] = Counter()
        self.job_timeout_s = JOB_TIMEOUT_S
        self.user_steps = USER_STEPS
        self.timeouts_expected = True

    def stub(self, method: str) -> Any:
        return self.nodes if method == "Heartbeat" else super().stub(method)

    def node_metadata(self, node: str) -> tuple[tuple[str, str], ...]:
        return ((NODE_ID, node),) if node in self.named else ()

    def _held_metadata(self, receipt: Receipt) -> tuple[tuple[str, str], ...]:
        handover = ((base.HANDOVER, receipt.handover),) if receipt.handover else ()
        return (*self.node_metadata(receipt.node), *handover)

    async def assign(self, node: str, deadline_s: float,
                     wait_ms: int = 0) -> tuple[base.Call, base.Held | None]:
        call, held = await super().assign(node, deadline_s, wait_ms)
        if held is None:
            return call, None
        started = Timestamp()
        started.GetCurrentTime()
        earlier = self.receipts.setdefault(held.job_id, [])
        receipt = Receipt(held.job_id, held.upload_url, node, len(earlier),
                          dict(call.headers).get(base.HANDOVER, ""), self._now_ms(), started,
                          asked_ms=call.started_ms)
        earlier.append(receipt)
        self.held[next(i for i, h in enumerate(self.held) if h is held)] = receipt
        return call, receipt

    def lost_in_transit(self, job_id: str) -> bool:
        """Sent and never received, and not yet final: a job that came back and ended
        holds no slot."""
        return super().lost_in_transit(job_id) and self.final.get(job_id) not in base.FINAL

    # --- what a node does with a job ---------------------------------------------------
    async def finish(self, node: str, held: base.Held, rng: random.Random) -> None:
        """A prompt finish by the node that received the job (the drain's way)."""
        assert isinstance(held, Receipt)
        await self._prompt(held, rng)

    async def handle(self, receipt: Receipt, rng: random.Random) -> None:
        names, weights = zip(*BEHAVIOURS, strict=True)
        behaviour = rng.choices(names, weights)[0]
        self.behaviours[behaviour] += 1
        if behaviour == "prompt":
            await self._prompt(receipt, rng)
        elif behaviour == "beat-then-prompt":
            await self._beat(receipt, 1)
            await self._prompt(receipt, rng)
        elif behaviour == "beat-then-quiet":
            await self._beat(receipt, rng.randint(1, 3))
            self._come_back(receipt, rng)
        elif behaviour == "late":
            self._come_back(receipt, rng)
        elif behaviour == "unavailable":
            await self._fail_for_the_backend(receipt, rng)
            if rng.random() < 0.5:
                self._come_back(receipt, rng)
        # "forget": never heard of again

    async def _prompt(self, receipt: Receipt, rng: random.Random) -> None:
        success = rng.random() < 0.75 and await self._put_result(receipt, receipt.upload_url)
        for _ in range(2 if rng.random() < 0.15 else 1):  # a retry of the same report
            await self._report(receipt, "SUCCESS" if success else "FAILURE", "", prompt=True)

    async def _fail_for_the_backend(self, receipt: Receipt, rng: random.Random) -> None:
        """Its backend failed it; now and then the node's retry races the first report."""
        reports = 2 if rng.random() < 0.3 else 1
        await asyncio.gather(*(self._report(receipt, "FAILURE", UNAVAILABLE, prompt=True)
                               for _ in range(reports)))

    def _come_back(self, receipt: Receipt, rng: random.Random) -> None:
        """The node went quiet; it comes back after its job was lost (and often handed to
        another node), renews its URL, uploads through the old one and reports."""
        lost_after_s = JOB_TIMEOUT_S + REPORT_GRACE_S
        delay_s = rng.uniform(lost_after_s + 0.1, 2.5 * lost_after_s)
        reports = rng.choice((1, 1, 2))
        outcome = rng.choice(("SUCCESS", "SUCCESS", "FAILURE"))

        async def back() -> None:
            await asyncio.sleep(delay_s)
            if rng.random() < 0.5:
                await self._refresh(receipt)
            uploaded = await self._put_result(receipt, receipt.upload_url)
            for _ in range(reports):
                await self._report(receipt, outcome if uploaded else "FAILURE", "",
                                   prompt=False)

        task = asyncio.create_task(back())
        self.later.add(task)
        task.add_done_callback(self.later.discard)

    async def _beat(self, receipt: Receipt, beats: int) -> None:
        for _ in range(beats):
            await self.rpc(receipt.node, "Heartbeat", nodes_pb2.HeartbeatRequest(
                job_id=receipt.job_id), base.PATIENT_S, self._held_metadata(receipt),
                job_id=receipt.job_id)
            await asyncio.sleep(HEARTBEAT_TIMEOUT_S / 3)

    async def _refresh(self, receipt: Receipt) -> None:
        await self.rpc(receipt.node, "RefreshUploadUrl", execution_pb2.RefreshUploadUrlRequest(
            job_id=receipt.job_id), base.PATIENT_S, self._held_metadata(receipt),
            job_id=receipt.job_id)

    async def _report(self, receipt: Receipt, outcome: str, code: str, prompt: bool) -> None:
        request = execution_pb2.ReportExecutionResultRequest(
            job_id=receipt.job_id, status=execution_pb2.ExecutionStatus.Value(
                f"EXECUTION_STATUS_{outcome}"))
        if code:
            request.error.code, request.error.description = code, "the backend went away"
        request.timestamps.compile_started_at.CopyFrom(receipt.started)
        request.timestamps.execution_started_at.CopyFrom(receipt.started)
        call, _ = await self.rpc(receipt.node, "ReportExecutionResult", request, base.PATIENT_S,
                                 self._held_metadata(receipt), job_id=receipt.job_id)
        call.answer = f"{outcome}{f' {code}' if code else ''} of receipt {receipt.number}"
        self.reports.append(Report(receipt, outcome, code, prompt, call))

    async def _put_result(self, receipt: Receipt, url: str) -> bool:
        call = base.Call(next(self._numbers), receipt.node, "PUT result",
                         self.patient_s * 1000, self._now_ms(), job_id=receipt.job_id,
                         answer=f"receipt {receipt.number}")
        self.calls.append(call)
        try:
            answer = await asyncio.to_thread(
                requests.put, url, data=gzip_result(receipt.result), headers=UPLOAD_HEADERS,
                timeout=self.patient_s)
            if answer.status_code >= 500:
                call.transport = f"HTTP {answer.status_code}"
            elif answer.status_code != 200:  # a stale hand-over's upload refused: an answer
                call.code = f"HTTP {answer.status_code}"
        except requests.RequestException as exc:
            call.transport = type(exc).__name__
        call.ended_ms = self._now_ms()
        return call.ok

    def excused(self, call: base.Call) -> bool:
        """Among replicas, a call cut short on purpose may end UNAVAILABLE: its connection
        was broken by a kill (the SDK's one retry goes out at once on the same connection,
        as tests/integration/test_replicas.py notes), or its short deadline ended while it
        waited for a leader (answered UNAVAILABLE: retry). A patient call has no excuse."""
        return self.sdk_retries and call.cut_short and call.transport == "UNAVAILABLE"

    def disturbed(self, started_ms: float, ended_ms: float) -> bool:
        return any(d.started_ms <= ended_ms and started_ms <= d.ended_ms
                   for d in self.disturbances)


# --- the actors --------------------------------------------------------------------------------
async def node_actor(world: Together, node: str, users_done: asyncio.Event) -> None:
    """Takes jobs as the base nodes do, and handles each as drawn; also the jobs users'
    own cut-short assigns received (as the node that received them)."""
    schedule = random.Random(f"{world.seed}/{node}")
    failures = 0
    while not users_done.is_set() and failures < base.NODE_GIVES_UP_AFTER:
        rng = random.Random(schedule.getrandbits(64))
        if rng.random() < 0.25:
            await asyncio.sleep(rng.uniform(0.02, 0.1))
        if rng.random() < 0.15:
            call, _ = await world.assign(node, world.cut_s("AssignNextJob", rng))
        else:
            call, _ = await world.assign(node, base.PATIENT_S, rng.choice((0, 50, 150)))
        failures = failures + 1 if call.code == "INTERNAL" else 0
        await asyncio.sleep(rng.uniform(0, 0.02))
        while world.held and rng.random() < 0.6:
            held = world.held.pop(0)
            assert isinstance(held, Receipt)
            await world.handle(held, rng)
    while world.held:
        held = world.held.pop(0)
        assert isinstance(held, Receipt)
        await world.handle(held, schedule)


Disturb = Callable[[Together], Coroutine[Any, Any, None]]


async def act(world: Together, disturb: Disturb | None, ops: base.User,
              budgeted: base.User) -> Counter[str]:
    users_done = asyncio.Event()
    nodes = [asyncio.create_task(node_actor(world, node, users_done)) for node, _ in NODES]
    chaos = asyncio.create_task(disturb(world)) if disturb else None
    operator = asyncio.create_task(turns.operator_actor(world, ops, users_done))
    sessions = [asyncio.create_task(turns.session_actor(world, user, users_done))
                for user in (*world.users, budgeted)]
    try:
        taken = await asyncio.gather(*(base.user_actor(world, user) for user in world.users),
                                     turns.budgeted_actor(world, budgeted))
    finally:
        users_done.set()
        await asyncio.gather(*nodes)
        if chaos is not None:
            await chaos
        taken_too = await asyncio.gather(operator, *sessions)
    return sum((*taken, *taken_too), Counter())


async def drain_until_final(world: Together) -> None:
    """Take and finish every job until the late nodes are back and every job is final."""
    await asyncio.sleep(base.SETTLE_S)
    rng = random.Random(f"{world.seed}/drain")
    bound = time.monotonic() + DRAIN_BOUND_S
    while time.monotonic() < bound:
        call, held = await world.assign("drain", base.PATIENT_S, 200)
        if held is not None:
            world.held.remove(held)
            await world.finish("drain", held, rng)
            continue
        if call.ok and not world.later:
            if await _all_final(world):
                break
            await turns.give_up_held_back(world)
        await asyncio.sleep(0.2)
    await base.collect_final(world)


async def _all_final(world: Together) -> bool:
    """Whether every known job is final; polls only those not seen final yet."""
    admin = next(u for u in world.users if u.role == "admin")
    for job_id in sorted(set(world.owner_of_job) | set(world.received) | set(world.sent)):
        if world.final.get(job_id) not in base.FINAL:
            call = await world.poll(world.owner_of_job.get(job_id) or admin, job_id)
            world.final[job_id] = call.answer if call.ok else "unknown"
    return all(status in base.FINAL for status in world.final.values())


def note_stranded_by_kills(world: Together) -> None:
    """A leader killed between handing a job over and its answer reaching the node leaves
    the job RUNNING until the watchdog ends it TIMEOUT: no replica can tell it from a job
    whose node runs it (docs/replicas.md, "Left for later"). In a seed with a kill, a job
    no node received that ended TIMEOUT is counted as an answer lost in transit (the
    processes' answers are not noted in AWS mode); seeds without a kill still hold it to
    the rules."""
    if not any(d.what.startswith("killed") for d in world.disturbances):
        return
    for job_id, final in world.final.items():
        if final == "TIMEOUT" and not world.received.get(job_id) and job_id not in world.sent:
            world.sent[job_id] = world.tag_of_job.get(job_id, "")


async def read_requeues(world: Together, store: JobStore) -> None:
    """Each job's count of requeues, as the store's record has it."""
    for job_id in world.final:
        record = await store.get(job_id)
        world.requeues[job_id] = record.requeues if record is not None else 0


async def download_results(world: Together) -> None:
    """Each COMPLETED job's result as its owner downloads it (the SDK's way)."""
    for job_id, status in world.final.items():
        owner = world.owner_of_job.get(job_id)
        if status != "COMPLETED" or owner is None:
            continue
        call, response = await world.rpc(owner.name, "GetJobResult", pb.GetJobResultRequest(
            token=owner.token, job_id=job_id), base.PATIENT_S, job_id=job_id)
        if not call.ok:
            world.results[job_id] = f"not fetched: {call.line()}"
            continue
        got = await asyncio.to_thread(requests.get, response.result.result_url,
                                      headers={"Accept-Encoding": "gzip"}, timeout=10)
        world.results[job_id] = _decompressed(got.content) if got.ok else \
            f"HTTP {got.status_code}"


# --- the rule of this module ---------------------------------------------------------------------
def _stale_hand_over(world: Together) -> Iterator[base.Violation]:
    for job_id, receipts in world.receipts.items():
        final = world.final.get(job_id, "unknown")
        reports = [r for r in world.reports if r.receipt.job_id == job_id]
        yield from _outcome_is_the_last(world, job_id, final, receipts[-1], reports)
        for report in reports:
            yield from _report_kept(world, final, receipts, report)


def _outcome_is_the_last(world: Together, job_id: str, final: str, last: Receipt,
                         reports: list[Report]) -> Iterator[base.Violation]:
    about = frozenset({job_id})
    if final == "COMPLETED":
        result = world.results.get(job_id, "not fetched")
        if result != last.result:
            shown = result if isinstance(result, str) else repr(result)
            yield base.Violation("stale-hand-over", f"job {job_id} COMPLETED with result "
                                 f"{shown}, not its last receipt's ({last.result!r})", about)
    wanted = {"COMPLETED": "SUCCESS", "FAILED": "FAILURE"}.get(final)
    if wanted and not any(r.receipt is last and r.outcome == wanted and r.call.ok
                          for r in reports):
        yield base.Violation("stale-hand-over", f"job {job_id} ended {final} but no report "
                             f"of {wanted} by its last receipt ({last.node}, "
                             f"#{last.number}) was accepted", about)


def _report_kept(world: Together, final: str, receipts: list[Receipt],
                 report: Report) -> Iterator[base.Violation]:
    receipt, call = report.receipt, report.call
    about = frozenset({receipt.job_id})
    later = receipts[receipt.number + 1:]
    settles = report.outcome == "SUCCESS" or report.code != UNAVAILABLE
    if later and call.ok and settles and call.ended_ms < later[0].received_ms:
        yield base.Violation("stale-hand-over", f"report #{call.n} of receipt "
                             f"{receipt.number} was accepted, yet the job was handed to "
                             f"{later[0].node} after it", about)
    elif later and call.ok and settles and not _repeated_by(world, report, receipts[-1]):
        yield base.Violation("stale-hand-over", f"report #{call.n} of superseded receipt "
                             f"{receipt.number} was accepted (the job ended {final})", about)
    deadline_ms = receipt.asked_ms + JOB_TIMEOUT_S * 1000
    if report.prompt and call.code == "FAILED_PRECONDITION" and call.ended_ms < deadline_ms \
            and not world.disturbed(receipt.asked_ms, call.ended_ms) \
            and not _reported_before(world, report):
        yield base.Violation("stale-hand-over", f"prompt report #{call.n} of receipt "
                             f"{receipt.number} was refused within the job's timeout: "
                             f"a stale call took the job from it", about)


def _repeated_by(world: Together, stale: Report, last: Receipt) -> bool:
    """The last receipt's node had got the same outcome accepted before the stale report
    was sent: the stale one only repeated it (rule 6), it decided nothing."""
    return any(r.receipt is last and r.outcome == stale.outcome and r.call.ok
               and r.call.ended_ms <= stale.call.started_ms for r in world.reports)


def _reported_before(world: Together, report: Report) -> bool:
    """The same receipt's node had sent another report first (a retry meets the outcome
    of its own first report, or of a failure of its backend: queued again)."""
    return any(r.receipt is report.receipt and r.call.n < report.call.n
               for r in world.reports)


def broken_rules(world: Together) -> list[base.Violation]:
    kept = [v for v in base.broken_rules(world) if not turns.requeued_then_cancelled(world, v)]
    return [*kept, *_stale_hand_over(world), *turns.broken_rules(world)]


def summary(world: Together) -> str:
    handed_again = sum(1 for receipts in world.receipts.values() if len(receipts) > 1)
    requeued = sum(1 for count in world.requeues.values() if count)
    return (f"{base.summary(world)}, {requeued} requeued, {handed_again} handed to a later "
            f"node; nodes {dict(world.behaviours)}; "
            f"disturbed {[d.what for d in world.disturbances]}; {turns.summary(world)}")


# --- the services under test --------------------------------------------------------------------
@dataclass
class Target:
    """Where the users and nodes call, how the test reads the store, and what the
    service's own side tells (standalone in this process: the answers it sent)."""

    clients: Clients
    nodes_channel: grpc.aio.Channel
    extension: grpc.aio.Channel  # the submission port's extension services
    store: JobStore
    token: Callable[[str, str], str]
    sent: dict[str, str] = field(default_factory=dict)
    disturb: Disturb | None = None
    patient_s: float = base.PATIENT_S
    sdk_retries: bool = False


@contextlib.asynccontextmanager
async def standalone_target(tmp_path: Path, request: pytest.FixtureRequest,
                            token_database: TokenDatabase, monkeypatch: pytest.MonkeyPatch,
                            max_requeues: int) -> AsyncIterator[Target]:
    sent: dict[str, str] = {}
    monkeypatch.setattr(ExecutionService, "AssignNextJob",
                        base._noting_sent_answers(ExecutionService.AssignNextJob, sent))
    env = _env(max_requeues, tmp_path / "budgets.toml")
    async with scheduler_in("standalone", tmp_path, request, token_database,
                            env=env) as running:
        assert running.data_dir is not None
        store = SqliteJobStore(running.data_dir / "jobs.sqlite3")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.execution_port}")
        extension = grpc.aio.insecure_channel(
            f"127.0.0.1:{running.scheduler.submission_port}")
        try:
            yield Target(running.clients, channel, extension, store, running.token, sent)
        finally:
            await channel.close()
            await extension.close()
            await store.close()


@contextlib.asynccontextmanager
async def aws_target(tmp_path: Path, moto_endpoint: str, variant: str,
                     max_requeues: int) -> AsyncIterator[Target]:
    async with aws_deployment(tmp_path, moto_endpoint) as deployment, \
            replicas_behind_proxies(deployment, 2,
                                    _env(max_requeues, tmp_path / "budgets.toml")) as (
                replicas, submission, execution):
        await asyncio.to_thread(replicas.start_all)
        await asyncio.to_thread(replicas.wait_for_leader)
        table = _table_name(deployment, moto_endpoint)
        store = DynamoDbJobStore(aws_client("dynamodb", moto_endpoint), table)
        clients = Clients(_port(submission.address), _port(execution.address))
        channel = grpc.aio.insecure_channel(execution.address)
        extension = grpc.aio.insecure_channel(submission.address)
        disturb = _killing(replicas) if variant == "kill" else _deposing(replicas)
        try:
            yield Target(clients, channel, extension, store, deployment.token, disturb=disturb,
                         patient_s=PATIENT_ACROSS_FAILOVER_S, sdk_retries=True)
        finally:
            await clients.close()
            await channel.close()
            await extension.close()
            await store.close()


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _table_name(deployment: Deployment, endpoint: str) -> str:
    key = deployment.aws_argv[deployment.aws_argv.index("--job_table_name_key") + 1]
    return str(aws_client("ssm", endpoint).get_parameter(Name=key)["Parameter"]["Value"])


def _killing(replicas: Replicas) -> Disturb:
    """SIGKILL the leader in the middle of a seed; start it again once another leads."""
    async def kill(world: Together) -> None:
        await asyncio.sleep(random.Random(f"{world.seed}/kill").uniform(0.5, 2.0))
        slot, epoch = await asyncio.to_thread(replicas.wait_for_leader)
        window = Disturbance(f"killed replica {slot} at epoch {epoch}", world._now_ms())
        world.disturbances.append(window)
        replicas.signal(slot, signal.SIGKILL).process.wait(timeout=10)
        await asyncio.to_thread(replicas.wait_for_leader, epoch)
        replicas.launch(slot)
        await asyncio.to_thread(replicas.wait_serving, slot)
        window.ended_ms = world._now_ms()

    return kill


def _deposing(replicas: Replicas) -> Disturb:
    """SIGSTOP the leader past its lease; SIGCONT it once the other replica leads."""
    async def depose(world: Together) -> None:
        await asyncio.sleep(random.Random(f"{world.seed}/depose").uniform(0.5, 2.0))
        slot, epoch = await asyncio.to_thread(replicas.wait_for_leader)
        window = Disturbance(f"stopped replica {slot} at epoch {epoch}", world._now_ms())
        world.disturbances.append(window)
        replicas.signal(slot, signal.SIGSTOP)
        try:
            await asyncio.to_thread(replicas.wait_for_leader, epoch)
        finally:
            replicas.signal(slot, signal.SIGCONT)
        await asyncio.sleep(1.0)  # its calls in flight are refused by the fence and routed
        window.ended_ms = world._now_ms()

    return depose


# --- the test ---------------------------------------------------------------------------------
def _cases() -> list[Any]:
    return [pytest.param(mode, variant, requeues, id=f"{mode}-{variant}")
            for mode, variants in VARIANTS.items() for variant, requeues in variants]


@pytest.mark.timeout(max(240.0, _run_s() + 240.0))
@pytest.mark.parametrize(("mode", "variant", "max_requeues"), _cases())
async def test_interleavings_with_requeues_heartbeats_and_replicas_keep_every_promise(
        mode: str, variant: str, max_requeues: int, tmp_path: Path,
        request: pytest.FixtureRequest, token_database: TokenDatabase,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if mode == "standalone":
        target = standalone_target(tmp_path, request, token_database, monkeypatch, max_requeues)
    else:
        target = aws_target(tmp_path, request.getfixturevalue("moto_endpoint"), variant,
                            max_requeues)
    failures: list[str] = []
    async with target as found:
        started = time.monotonic()
        seed = 1
        while True:
            failure = await one_seed(found, seed, f"{mode}-{variant}")
            if failure:
                failures.append(failure)
            seed += 1
            if time.monotonic() - started >= _run_s():
                break
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


async def one_seed(target: Target, seed: int, case: str) -> str:
    """Run one seed against the target; its report when a rule broke, else ""."""
    started = time.monotonic()
    target.sent.clear()  # the answers the server sent are noted per seed
    users = [base.User(name, role, target.token(name, role)) for name, role in base.USERS]
    budgeted_name, _ = turns.budgeted_user(seed)
    budgeted = base.User(budgeted_name, turns.BUDGET_ROLE,
                         target.token(budgeted_name, turns.BUDGET_ROLE))
    ops = base.User(*turns.OPERATOR, target.token(*turns.OPERATOR))
    world = Together(target.clients, nodes_pb2_grpc.NodeServiceStub(target.nodes_channel),
                     target.sent, seed, users, target.extension)
    world.patient_s, world.sdk_retries = target.patient_s, target.sdk_retries
    # The budgeted user is not one of the base users: its budget, spent, would refuse the
    # quota check's submissions.
    steps = await act(world, target.disturb, ops, budgeted)
    await turns.end_windows(world, ops)
    await drain_until_final(world)
    await base.check_quotas(world)
    await base.check_queue(world)
    await drain_until_final(world)  # the queue check's job, and any the quota check made
    await turns.end_sessions(world, ops)
    await turns.read_usage(world, budgeted)
    await read_requeues(world, target.store)
    note_stranded_by_kills(world)
    await download_results(world)
    violations = broken_rules(world) + world.violations
    kinds = Counter(base._kind(v) for v in violations)
    refused = Counter(c.code for c in world.calls if c.code)
    print(f"\ninterleavings together seed {seed} ({case}): {summary(world)}; "
          f"{time.monotonic() - started:.1f} s; steps {dict(steps)}; refused {dict(refused)}; "
          f"broken {dict(kinds)}")
    return base.report(world, case, violations) if violations else ""


def _decompressed(body: bytes) -> bytes:
    """A result body whether or not the HTTP client undid its gzip encoding."""
    return gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body


# --- what the interleavings found, pinned down ----------------------------------------------------
async def test_a_job_spends_its_owners_budget_once_and_not_at_all_when_never_received(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the budget rule (standalone seed 1, both variants): a job whose node left
    before receiving it was counted as handed over, and a requeued job was counted again
    at each hand-over, so a budget was spent by jobs that never ran (GetUsage said 400
    shots used of a 250-shot budget after one job ran). A job counts once, from its first
    hand-over a node received, and a count read from the store after a restart agrees."""
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[users."erin"]\nperiod = "day"\nshots = 250\n')
    env = {"SCHEDULER_BUDGETS_FILE": str(budgets), "SCHEDULER_MAX_REQUEUES": "1",
           "SCHEDULER_HEARTBEAT_TIMEOUT_S": "0.3"}
    async with scheduler_in("standalone", tmp_path, request, token_database,
                            env=env) as running, _Budgeted(running) as erin:
        first = await erin.submit()
        # The node leaves while its hand-over is being written: the job is given back.
        with _slow_hand_overs(monkeypatch):
            with pytest.raises(grpc.aio.AioRpcError):
                await running.clients.execution.AssignNextJob(
                    execution_pb2.AssignNextJobRequest(backend=base.BACKEND), timeout=0.1)
            await asyncio.sleep(0.4)  # the write ends, then the job is given back
            await erin.until_queued(first)
        assert await erin.used() == 0  # never received: nothing run
        assert (await running.clients.assign()).job_id == first
        assert await erin.used() == 100
        # Its node beats once, then goes quiet: queued again.
        await erin.nodes.Heartbeat(nodes_pb2.HeartbeatRequest(job_id=first))
        await erin.until_queued(first)
        assert await erin.used() == 100
        token = erin.token
    async with scheduler_in("standalone", tmp_path, request, token_database,
                            env=env) as running, _Budgeted(running, token) as erin:
        assert await erin.used() == 100  # read from the store: received once, so counted
        assert (await running.clients.assign()).job_id == first
        assert await erin.used() == 100  # one job, counted once
        second = await erin.submit()  # 100 + 100 is within 250
        assert (await running.clients.assign()).job_id == second
        third = await running.clients.submission.SubmitJob(submit_request(erin.token))
        assert third.error.code == "RESOURCE_EXHAUSTED"
        assert "the budget of 250 shots per day: 200 used" in third.error.description


async def test_a_count_of_a_budget_read_late_does_not_undo_the_hand_overs_since(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found looking for the cause of one run of this module that failed under load (its
    report was lost): two submissions at once both read the owner's use from the store;
    the first read was kept and a job handed over was counted on it, then the second
    read, older, replaced it, and the budget forgot that job (GetUsage said 0 shots used
    after a job ran). The count kept first is the one kept up to date."""
    budgets = tmp_path / "budgets.toml"
    budgets.write_text('[users."erin"]\nperiod = "day"\nshots = 250\n')
    reads = 0
    records = listing.records

    async def second_read_late(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        mine = reads
        found = [record async for record in records(*args, **kwargs)]
        if mine == 2:
            await asyncio.sleep(0.5)  # read before the hand-over, answered after it
        for record in found:
            yield record

    async with scheduler_in("standalone", tmp_path, request, token_database,
                            env={"SCHEDULER_BUDGETS_FILE": str(budgets)}) as running, \
            _Budgeted(running) as erin:
        monkeypatch.setattr(listing, "records", second_read_late)
        submitting = {asyncio.create_task(erin.submit()) for _ in range(2)}
        done, waiting = await asyncio.wait(submitting, return_when=asyncio.FIRST_COMPLETED)
        assert reads == 2 and len(waiting) == 1  # the other's read is answered late
        assert (await running.clients.assign()).job_id == done.pop().result()
        await waiting.pop()
        monkeypatch.undo()
        assert await erin.used() == 100


class _Budgeted:
    """erin, with a budget, calling one running scheduler."""

    def __init__(self, running: Any, token: str = "") -> None:
        self.running = running
        self.token = token or running.token("erin")
        port = running.scheduler.submission_port
        self._channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}"),
                          grpc.aio.insecure_channel(
                              f"127.0.0.1:{running.scheduler.execution_port}")]
        self.jobs = jobs_pb2_grpc.JobsServiceStub(self._channels[0])
        self.nodes = nodes_pb2_grpc.NodeServiceStub(self._channels[1])

    async def __aenter__(self) -> _Budgeted:
        return self

    async def __aexit__(self, *_: object) -> None:
        for channel in self._channels:
            await channel.close()

    async def submit(self) -> str:
        answer = await self.running.clients.submission.SubmitJob(submit_request(self.token))
        assert answer.error.code == "", answer.error
        return str(answer.job_id)

    async def used(self) -> int:
        answer = await self.jobs.GetUsage(jobs_pb2.GetUsageRequest(token=self.token))
        return int(answer.usage[0].budget.shots_used)

    async def until_queued(self, job_id: str) -> None:
        for _ in range(100):
            answer = await self.running.clients.submission.GetJobStatus(
                pb.GetJobStatusRequest(token=self.token, job_id=job_id))
            if answer.status == job_pb2.JOB_STATUS_QUEUED:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id} did not come back to its queue")


@contextlib.contextmanager
def _slow_hand_overs(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each QUEUED→RUNNING write takes 0.3 s more, so a node's short call ends first."""
    transition = SqliteJobStore.transition

    async def slow(self: SqliteJobStore, before: Any, after: Any, fence: Any = None) -> bool:
        if after.status.value == "RUNNING":
            await asyncio.sleep(0.3)
        return await transition(self, before, after, fence)

    with monkeypatch.context() as patched:
        patched.setattr(SqliteJobStore, "transition", slow)
        yield


async def test_sessions_and_bookings_opened_at_once_are_all_written(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase) -> None:
    """Found by the answered rule (standalone seed 1, requeues-1, with sessions among the
    calls): three users opening sessions at once, one was answered INTERNAL (store_failed),
    as the leader's own writes of the sessions' document raced each other past their
    three attempts. The leader is their only writer: its writes go one at a time."""
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.submission_port}")
        reservations = reservations_pb2_grpc.ReservationsServiceStub(channel)
        names = [f"user{n}" for n in range(8)]
        opened = await asyncio.gather(*(reservations.OpenSession(rpb.OpenSessionRequest(
            token=running.token(name), backend=base.BACKEND)) for name in names))
        assert [answer.error.code for answer in opened] == [""] * len(names)
        root = running.token("root", "admin")
        now = datetime.now(UTC)

        def booking(n: int) -> rpb.BookBackendRequest:
            request = rpb.BookBackendRequest(token=root, backend=base.BACKEND, users=["alice"])
            request.starts_at.FromDatetime(now + timedelta(hours=n + 1))
            request.ends_at.FromDatetime(now + timedelta(hours=n + 1, minutes=30))
            return request

        booked = await asyncio.gather(*(reservations.BookBackend(booking(n)) for n in range(8)))
        assert [answer.error.code for answer in booked] == [""] * 8
        await channel.close()

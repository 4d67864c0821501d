"""What the phases share: the users' channels, the hardware nodes' channels, the HTTP
session nodes upload with, and the ledger of every job; one SubmitJob, one
AssignNextJob, one upload-and-report, as clients and nodes make them (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import grpc
import yarl

from benchmarks.clients import RPC_TIMEOUT_S, Outcome, channel, close_all
from benchmarks.deployment import Metrics, Target
from benchmarks.ledger import JobEntry, Ledger
from benchmarks.stats import PhaseResult
from pb.mqc3_cloud.program.v1 import quantum_program_pb2 as program_pb2
from pb.mqc3_cloud.scheduler.v1 import (
    execution_pb2,
    execution_pb2_grpc,
    job_pb2,
    submission_pb2,
    submission_pb2_grpc,
)

WORK_BACKEND = "emulator"  # submit, drain and steady
IDLE_BACKEND = "qpu"  # the status phase's live jobs wait here: no node polls it
WAIT_METADATA = "x-mqc3-wait-ms"
UPLOAD_HEADERS = {  # docs/protocol.md: how a node uploads its result
    "Content-Type": "application/protobuf",
    "Content-Encoding": "gzip",
    "Content-Disposition": "attachment",
}
# Store operations that only read; every other operation counts as a write.
READ_OPERATIONS = ("get", "get_input", "result_exists", "list_by_status",
                   "find_by_idempotency_key")
RESULT_RAW = bytes(range(256)) * 2  # what a node "measured": 512 bytes


def circuit_program(text: bytes, size: int) -> bytes:
    """A circuit program of ``size`` bytes: a serialized CircuitRepresentation (the SDK's
    schema) holding only its ``name`` (field 100), ``text`` padded with dots. A scheduler
    that parses the program as that message (the original does) serializes it back to
    these same bytes. Never shorter than ``text`` and its header; one byte longer for
    the few sizes no length fits (131: a length of 128 takes a two-byte varint)."""
    length = max(len(text), size - 1 - len(_varint(size)))
    for prefix in (1, 2, 3, 4):  # the length's varint
        if size - 2 - prefix >= len(text) and len(_varint(size - 2 - prefix)) == prefix:
            length = size - 2 - prefix
            break
    return b"\xa2\x06" + _varint(length) + text + b"." * (length - len(text))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def writes(calls: dict[str, int] | None) -> int | None:
    """How many of ``calls`` (``store.operation`` → count) are writes."""
    if calls is None:
        return None
    return sum(n for key, n in calls.items() if key.rsplit(".", 1)[-1] not in READ_OPERATIONS)


@dataclass
class Taken:
    """A node's AssignNextJob answer."""

    outcome: Outcome
    answer: execution_pb2.AssignNextJobResponse | None = None
    received_at_s: float = 0.0

    @property
    def job_id(self) -> str:
        return self.answer.job_id if self.answer is not None else ""


@dataclass
class Session:
    """Clients, nodes and the ledger of one run."""

    target: Target
    http: aiohttp.ClientSession
    metrics: Metrics
    clients: int
    nodes: int
    payload_bytes: int
    ledger: Ledger = field(default_factory=Ledger)
    _channels: list[grpc.aio.Channel] = field(default_factory=list)
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        users = [channel(self.target.submission) for _ in range(self.clients)]
        machines = [channel(self.target.execution) for _ in range(self.nodes)]
        self._channels = users + machines
        self.submitters = [submission_pb2_grpc.SubmissionServiceStub(c) for c in users]
        self.executors = [execution_pb2_grpc.ExecutionServiceStub(c) for c in machines]
        self.result_body = gzip.compress(RESULT_RAW)

    async def close(self) -> None:
        await close_all(self._channels)

    def token_of(self, client: int) -> int:
        return client % len(self.target.tokens)

    # --- users -------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect every channel and warm the token cache (GetServiceStatus per client)."""
        for client, stub in enumerate(self.submitters):
            token = self.target.tokens[self.token_of(client)]
            await stub.GetServiceStatus(submission_pb2.GetServiceStatusRequest(
                token=token, backend=WORK_BACKEND), timeout=RPC_TIMEOUT_S)
        for node in self.executors:
            await node.AssignNextJob(execution_pb2.AssignNextJobRequest(backend=IDLE_BACKEND),
                                     timeout=RPC_TIMEOUT_S)

    def _program(self, phase: str, client: int) -> bytes:
        nonce = f"{phase}/{client}/{next(self._sequence)}/".encode()
        return circuit_program(nonce, self.payload_bytes)

    async def submit(self, phase: str, client: int, backend: str = WORK_BACKEND) -> Outcome:
        """One SubmitJob; an accepted job goes into the ledger with its acknowledgement time."""
        return (await self.submit_job(phase, client, backend))[0]

    async def submit_job(self, phase: str, client: int,
                         backend: str = WORK_BACKEND) -> tuple[Outcome, str]:
        """One SubmitJob: the outcome and, when accepted, the job id."""
        token_index = self.token_of(client)
        program = self._program(phase, client)
        request = submission_pb2.SubmitJobRequest(token=self.target.tokens[token_index],
                                                  sdk_version="mqc3-bench")
        request.job.program.format = program_pb2.REPRESENTATION_FORMAT_CIRCUIT
        request.job.program.circuit = program
        request.job.settings.backend = backend
        request.job.settings.n_shots = 100
        request.job.settings.timeout.seconds = 600
        try:
            answer = await self.submitters[client].SubmitJob(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            self.ledger.ambiguous_submits += 1
            return f"transport_{exc.code().name}", ""
        acknowledged = time.perf_counter()
        if answer.error.code:
            return str(answer.error.code), ""
        self.ledger.accepted(answer.job_id, JobEntry(program, token_index, backend, phase,
                                                     acknowledged))
        return "", answer.job_id

    async def queue_jobs(self, phase: str, count: int, backend: str) -> None:
        """``count`` accepted jobs for ``phase``, submitted by every client at once. A
        refused submission fails the run: on the emulator (docs/emulators.md) nothing
        refuses one for the emulator's sake, as moto's whole-table copy once did."""
        made = iter(range(count))
        refused: Counter[str] = Counter()

        async def client(index: int) -> None:
            for _ in made:
                outcome = await self.submit(phase, index, backend)
                if outcome:
                    refused[outcome] += 1

        await asyncio.gather(*(client(i) for i in range(self.clients)))
        if refused:
            raise RuntimeError(f"{phase}: submissions refused: {dict(refused)}")

    async def status(self, client: int, job_id: str, expected: int | None = None) -> Outcome:
        """One GetJobStatus with the job owner's token; ``expected`` is the status it must
        answer (any status when None)."""
        request = submission_pb2.GetJobStatusRequest(
            token=self.target.tokens[self.ledger.jobs[job_id].token_index], job_id=job_id)
        try:
            answer = await self.submitters[client].GetJobStatus(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return f"transport_{exc.code().name}"
        return _checked(answer, expected)

    async def result(self, client: int, job_id: str) -> Outcome:
        """One GetJobResult of a finished job, with its owner's token."""
        request = submission_pb2.GetJobResultRequest(
            token=self.target.tokens[self.ledger.jobs[job_id].token_index], job_id=job_id)
        try:
            answer = await self.submitters[client].GetJobResult(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return f"transport_{exc.code().name}"
        return _checked(answer, int(job_pb2.JOB_STATUS_COMPLETED))

    # --- hardware nodes ------------------------------------------------------------------
    async def take(self, node: int, backend: str, wait_ms: int = 0) -> Taken:
        """One AssignNextJob (a long poll with ``wait_ms``); a received job goes in the ledger."""
        metadata = ((WAIT_METADATA, str(wait_ms)),) if wait_ms else None
        try:
            answer = await self.executors[node].AssignNextJob(
                execution_pb2.AssignNextJobRequest(backend=backend), metadata=metadata,
                timeout=RPC_TIMEOUT_S + wait_ms / 1000)
        except grpc.aio.AioRpcError as exc:
            return Taken(f"transport_{exc.code().name}")
        received = time.perf_counter()
        if answer.error.code:
            return Taken(str(answer.error.code))
        if answer.job_id:
            self.ledger.assigned(answer.job_id, answer.job.program.circuit, received)
        return Taken("", answer, received)

    async def finish_left_behind(self, backend: str, phase: PhaseResult) -> int:
        """Take and finish what is still queued on ``backend`` (node 0, one at a time):
        a phase that failed calls, or whose nodes stopped waiting, leaves no job behind."""
        finished = 0
        while (taken := await self.take(0, backend)).job_id:
            if not await self.finish(0, taken, phase):
                finished += 1
        return finished

    async def finish(self, node: int, taken: Taken, phase: PhaseResult) -> Outcome:
        """Upload the gzip result to the job's URL, then report SUCCESS."""
        assert taken.answer is not None
        began = time.perf_counter()
        url = yarl.URL(taken.answer.upload_target.upload_url, encoded=True)
        try:
            async with self.http.put(url, data=self.result_body,
                                     headers=UPLOAD_HEADERS) as response:
                await response.read()
                if response.status != 200:
                    return f"upload_http_{response.status}"
        except aiohttp.ClientError as exc:
            return f"upload_{type(exc).__name__}"
        uploaded = time.perf_counter()
        phase.samples("upload").add(uploaded - began)
        request = execution_pb2.ReportExecutionResultRequest(
            job_id=taken.job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS,
            uploaded_result=job_pb2.JobUploadedResult(
                raw_size_bytes=len(RESULT_RAW), encoded_size_bytes=len(self.result_body)),
            version=execution_pb2.ExecutionVersion(physical_lab="mqc3-bench"))
        try:
            answer = await self.executors[node].ReportExecutionResult(request,
                                                                      timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return f"transport_{exc.code().name}"
        if answer.error.code:
            self.ledger.report_refusals[answer.error.code] += 1
            return str(answer.error.code)
        phase.samples("report").add(time.perf_counter() - uploaded)
        self.ledger.reported(taken.job_id)
        return ""


def _checked(answer: submission_pb2.GetJobStatusResponse | submission_pb2.GetJobResultResponse,
             expected: int | None) -> Outcome:
    if answer.error.code:
        return str(answer.error.code)
    if expected is not None and answer.status != expected:
        return f"unexpected_{job_pb2.JobStatus.Name(answer.status)}"
    return ""

"""Ownership: a job answers its owner and admins; to anyone else it does not exist.

For GetJobStatus, GetJobResult and CancelJob, in both modes, over real gRPC: the owner
and an admin get an answer; another developer and a guest get NOT_FOUND, and their
whole answer (message bytes, gRPC code and details, metadata) is the answer a job id
that was never issued gets, but for the job id in the description.
"""

from __future__ import annotations

import asyncio
import gzip
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import requests

from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2, submission_pb2_grpc
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from pb.mqc3_scheduler.extension.v1 import jobs_pb2, jobs_pb2_grpc
from tests.conftest import SHARED, Running, scheduler_in
from tests.helpers import UPLOAD_HEADERS, TokenDatabase, submit_request

OWNER = ("alice", "developer")
CALLERS = {
    "owner": OWNER,
    "other-developer": ("bob", "developer"),
    "guest": ("gus", "guest"),
    "admin": ("ada", "admin"),
}
STRANGERS = ["other-developer", "guest"]
ENTITLED = ["owner", "admin"]


@dataclass(frozen=True)
class Answer:
    """Everything a client can see of one unary call."""

    message: bytes
    code: Any
    details: str | None
    initial_metadata: tuple[tuple[str, str | bytes], ...]
    trailing_metadata: tuple[tuple[str, str | bytes], ...]
    response: Any

    def with_job_id(self, old: str, new: str) -> Answer:
        """The same answer with every mention of job ``old`` turned into ``new``."""
        return Answer(
            message=self.message.replace(old.encode(), new.encode()),
            code=self.code,
            details=self.details,
            initial_metadata=self.initial_metadata,
            trailing_metadata=self.trailing_metadata,
            response=None,
        )

    def comparable(self) -> tuple[object, ...]:
        return (self.message, self.code, self.details, self.initial_metadata,
                self.trailing_metadata)


def _metadata(metadata: Any) -> tuple[tuple[str, str | bytes], ...]:
    return tuple((str(key), value) for key, value in (metadata or ()))


async def _observe(call: Any) -> Answer:
    response = await call
    return Answer(
        message=response.SerializeToString(deterministic=True),
        code=await call.code(),
        details=await call.details(),
        initial_metadata=_metadata(await call.initial_metadata()),
        trailing_metadata=_metadata(await call.trailing_metadata()),
        response=response,
    )


Stub = submission_pb2_grpc.SubmissionServiceStub
JobCall = Callable[[Stub, str, str], Any]


def _get_job_status(stub: Stub, token: str, job_id: str) -> Any:
    return stub.GetJobStatus(pb.GetJobStatusRequest(token=token, job_id=job_id))


def _get_job_result(stub: Stub, token: str, job_id: str) -> Any:
    return stub.GetJobResult(pb.GetJobResultRequest(token=token, job_id=job_id))


def _cancel_job(stub: Stub, token: str, job_id: str) -> Any:
    return stub.CancelJob(pb.CancelJobRequest(token=token, job_id=job_id))


# --- making jobs --------------------------------------------------------------------------
async def _queued_job(running: Running, owner_token: str) -> str:
    answer = await running.clients.submission.SubmitJob(submit_request(owner_token))
    assert answer.error.code == "", answer.error
    return str(answer.job_id)


async def _completed_job(running: Running, owner_token: str) -> str:
    job_id = await _queued_job(running, owner_token)
    assigned = await running.clients.assign()
    assert assigned.job_id == job_id, assigned.error
    uploaded = await asyncio.to_thread(
        requests.put, assigned.upload_target.upload_url, data=gzip.compress(b"\x0a\x01r"),
        headers=UPLOAD_HEADERS, timeout=10)
    assert uploaded.status_code == 200, uploaded.text
    reported = await running.clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(
            job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS))
    assert reported.error.code == "", reported.error
    return job_id


async def _owners_view(running: Running, owner_token: str, job_id: str) -> int:
    answer = await running.clients.submission.GetJobStatus(
        pb.GetJobStatusRequest(token=owner_token, job_id=job_id))
    assert answer.error.code == "", answer.error
    return int(answer.status)


@dataclass(frozen=True)
class Case:
    """One RPC on a job in one state, and what an entitled caller's answer must show."""

    call: JobCall
    make_job: Callable[[Running, str], Any]
    status_before: int
    status_after_entitled_call: int

    def check_entitled(self, response: Any) -> None:
        if isinstance(response, pb.GetJobStatusResponse):
            assert response.status == self.status_before
        elif isinstance(response, pb.GetJobResultResponse):
            assert response.status == job_pb2.JOB_STATUS_COMPLETED
            assert response.result.result_url


CASES = [
    pytest.param(Case(_get_job_status, _queued_job, job_pb2.JOB_STATUS_QUEUED,
                      job_pb2.JOB_STATUS_QUEUED), id="GetJobStatus-queued"),
    pytest.param(Case(_get_job_status, _completed_job, job_pb2.JOB_STATUS_COMPLETED,
                      job_pb2.JOB_STATUS_COMPLETED), id="GetJobStatus-completed"),
    pytest.param(Case(_get_job_result, _completed_job, job_pb2.JOB_STATUS_COMPLETED,
                      job_pb2.JOB_STATUS_COMPLETED), id="GetJobResult-completed"),
    pytest.param(Case(_cancel_job, _queued_job, job_pb2.JOB_STATUS_QUEUED,
                      job_pb2.JOB_STATUS_CANCELLED), id="CancelJob-queued"),
]


# --- the tests ----------------------------------------------------------------------------
@pytest_asyncio.fixture(loop_scope="module")
async def owner_token(shared: Running) -> AsyncIterator[str]:
    """A token of the owner's, new for each test on the module's shared scheduler
    (tests/conftest.py, SHARED). A job it leaves queued is cancelled afterwards: a node takes
    the oldest queued job, and the next test's completed job must be the one it hands over
    (``_completed_job`` checks that it is)."""
    token = shared.token(*OWNER)
    yield token
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{shared.scheduler.submission_port}") as channel:
        left = await jobs_pb2_grpc.JobsServiceStub(channel).ListJobs(jobs_pb2.ListJobsRequest(
            token=token, statuses=[job_pb2.JOB_STATUS_QUEUED]))
        assert left.error.code == "", left.error
        for entry in left.jobs:
            cancelled = await _cancel_job(shared.clients.submission, token, entry.job_id)
            assert cancelled.error.code == "", cancelled.error


@SHARED
@pytest.mark.parametrize("caller", ENTITLED)
@pytest.mark.parametrize("case", CASES)
async def test_the_owner_and_an_admin_are_answered(shared: Running, owner_token: str, case: Case,
                                                   caller: str) -> None:
    job_id = await case.make_job(shared, owner_token)
    token = owner_token if caller == "owner" else shared.token(*CALLERS[caller])

    answer = await _observe(case.call(shared.clients.submission, token, job_id))

    assert answer.response.error.code == "", answer.response.error
    case.check_entitled(answer.response)
    assert await _owners_view(shared, owner_token, job_id) == case.status_after_entitled_call


@SHARED
@pytest.mark.parametrize("caller", STRANGERS)
@pytest.mark.parametrize("case", CASES)
async def test_to_anyone_else_the_job_looks_exactly_like_one_that_does_not_exist(
        shared: Running, owner_token: str, case: Case, caller: str) -> None:
    job_id = await case.make_job(shared, owner_token)
    stranger = shared.token(*CALLERS[caller])
    never_issued = str(uuid.uuid4())

    refused = await _observe(case.call(shared.clients.submission, stranger, job_id))
    unknown = await _observe(case.call(shared.clients.submission, stranger, never_issued))

    assert refused.response.error.code == "NOT_FOUND", refused.response.error
    assert job_id in refused.response.error.description
    assert unknown.response.error.code == "NOT_FOUND"
    assert refused.with_job_id(job_id, never_issued).comparable() == unknown.comparable()
    # Nothing about the job changed, and nothing of it leaked into the answer.
    assert await _owners_view(shared, owner_token, job_id) == case.status_before
    assert OWNER[0] not in refused.response.error.description


@SHARED
@pytest.mark.parametrize("case", CASES)
async def test_a_strangers_refusal_equals_the_owners_answer_for_a_job_that_does_not_exist(
        shared: Running, owner_token: str, case: Case) -> None:
    # Not even the caller's identity changes the shape of NOT_FOUND.
    job_id = await case.make_job(shared, owner_token)
    never_issued = str(uuid.uuid4())

    refused = await _observe(case.call(shared.clients.submission,
                                       shared.token("bob", "developer"), job_id))
    owners_unknown = await _observe(case.call(shared.clients.submission, owner_token,
                                              never_issued))

    assert refused.with_job_id(job_id, never_issued).comparable() == owners_unknown.comparable()


# --- probing: what an id costs must not tell whether it names a job (issue 27, item 9) ----
PROBES = 5


async def _probe(running: Running, token: str, job_id: str) -> list[Answer]:
    stub = running.clients.submission
    return [await _observe(_get_job_status(stub, token, job_id)) for _ in range(PROBES)]


def _reason(answer: Answer) -> tuple[str, str]:
    error = answer.response.error
    return error.code, error.description.rpartition("[reason=")[2].split(" ")[0]


@pytest.mark.parametrize("make_job", [_queued_job, _completed_job], ids=["queued", "completed"])
async def test_probing_another_users_job_costs_what_probing_a_made_up_id_costs(
        mode: str, tmp_path: Path, request: pytest.FixtureRequest,
        token_database: TokenDatabase, monkeypatch: pytest.MonkeyPatch,
        make_job: Callable[[Running, str], Any]) -> None:
    # One read that finds no job the token may see, then one per 100 s.
    env = {"SCHEDULER_JOB_MISS_RATE_PER_TOKEN": "0.01"}
    async with scheduler_in(mode, tmp_path, request, token_database, env) as running:
        job_id = await make_job(running, running.token(*OWNER))
        made_up = str(uuid.uuid4())
        reads: Counter[str] = Counter()
        store = running.scheduler.stack.jobs
        read = store.get

        async def counted(wanted: str) -> Any:
            reads[wanted] += 1
            return await read(wanted)

        monkeypatch.setattr(store, "get", counted)
        # Two strangers, one budget each: one probes the real job, one a made-up id.
        bob, carol = running.token("bob", "developer"), running.token("carol", "developer")
        probed_real = await _probe(running, bob, job_id)
        probed_made_up = await _probe(running, carol, made_up)
        # Then each asks for one more unknown id: the budget left must be the same.
        next_real = await _observe(_get_job_status(running.clients.submission, bob,
                                                   str(uuid.uuid4())))
        next_made_up = await _observe(_get_job_status(running.clients.submission, carol,
                                                      str(uuid.uuid4())))

    assert [answer.with_job_id(job_id, made_up).comparable() for answer in probed_real] == [
        answer.comparable() for answer in probed_made_up]
    assert {answer.response.error.code for answer in probed_real} == {"NOT_FOUND"}
    assert reads[job_id] == reads[made_up] == 1  # the first probe reads; the rest remember
    assert _reason(next_real) == _reason(next_made_up) == (
        "RESOURCE_EXHAUSTED", "job_lookups_exhausted")

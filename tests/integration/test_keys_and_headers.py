"""Idempotency keys reused for another request, and repeated x-mqc3-* headers, over real
gRPC in both modes (issue 26, point 7; docs/protocol.md, "Metadata")."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from pb.mqc3_cloud.scheduler.v1 import execution_pb2
from pb.mqc3_scheduler.extension.v1 import jobs_pb2, jobs_pb2_grpc
from tests.conftest import SHARED, Running
from tests.helpers import submit_request

KEY = "x-mqc3-idempotency-key"


async def _jobs_of(running: Running, token: str) -> list[str]:
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{running.scheduler.submission_port}") as channel:
        answer = await jobs_pb2_grpc.JobsServiceStub(channel).ListJobs(
            jobs_pb2.ListJobsRequest(token=token), timeout=10)
    assert answer.error.code == "", answer.error
    return [entry.job_id for entry in answer.jobs]


@SHARED
@pytest.mark.parametrize("header", [KEY, "x-mqc3-tags"])
async def test_a_repeated_submission_header_is_refused_naming_it_and_makes_no_job(
        shared: Running, header: str) -> None:
    token = shared.token("alice", "developer")
    values = ("run-1", "run-2") if header == KEY else ("team=optics", "run=7")
    answer = await shared.clients.submission.SubmitJob(
        submit_request(token), metadata=tuple((header, value) for value in values), timeout=10)
    assert answer.error.code == "INVALID_ARGUMENT", answer.error
    assert answer.error.description.startswith(f"metadata {header} was sent 2 times"), answer
    assert await _jobs_of(shared, token) == []


@pytest.mark.parametrize("header", ["x-mqc3-wait-ms", "x-mqc3-node-id"])
async def test_a_repeated_node_header_is_refused_naming_it_and_hands_nothing_over(
        running: Running, header: str) -> None:
    token = running.token("alice", "developer")
    submitted = await running.clients.submission.SubmitJob(submit_request(token), timeout=10)
    values = ("0", "10") if header == "x-mqc3-wait-ms" else ("lab-1", "lab-2")
    answer = await running.clients.execution.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend="emulator"),
        metadata=tuple((header, value) for value in values), timeout=10)
    assert answer.error.code == "INVALID_ARGUMENT", answer.error
    assert answer.error.description.startswith(f"metadata {header} was sent 2 times"), answer
    assert answer.job_id == ""
    assert (await running.clients.assign()).job_id == submitted.job_id  # still queued


async def test_a_key_reused_for_another_request_is_refused_naming_it(running: Running) -> None:
    stub = running.clients.submission
    token = running.token("alice", "developer")
    keyed = ((KEY, "order-7"),)
    first = await stub.SubmitJob(submit_request(token), metadata=keyed, timeout=10)
    assert first.error.code == "" and first.job_id
    again = await stub.SubmitJob(submit_request(token), metadata=keyed, timeout=10)
    assert (again.error.code, again.job_id) == ("", first.job_id)  # a retry: the same job
    saved = submit_request(token)
    saved.options.save_job = True
    others = [(submit_request(token, "qpu"), ()), (submit_request(token, n_shots=7), ()),
              (submit_request(token, timeout_s=61), ()),
              (submit_request(token, payload=b"\x08\x03"), ()), (saved, ()),
              (submit_request(token), (("x-mqc3-tags", "run=8"),))]
    for other, tags in others:
        answer = await stub.SubmitJob(other, metadata=keyed + tags, timeout=10)
        assert answer.error.code == "INVALID_ARGUMENT", answer.error
        assert answer.error.description.startswith(
            "idempotency key 'order-7' was first used for job "
            f"{first.job_id} with another request"), answer.error
        assert answer.job_id == ""
    assert await _jobs_of(running, token) == [first.job_id]


async def test_two_requests_racing_with_one_key_make_one_job_and_one_refusal(
        running: Running) -> None:
    token = running.token("alice", "developer")
    keyed = ((KEY, "race-1"),)
    answers = await asyncio.gather(*(
        running.clients.submission.SubmitJob(submit_request(token, n_shots=shots),
                                             metadata=keyed, timeout=10)
        for shots in (1, 2, 1, 2)))
    made = {answer.job_id for answer in answers if answer.error.code == ""}
    assert len(made) == 1, answers
    refused = [answer for answer in answers if answer.error.code]
    assert {answer.error.code for answer in refused} == {"INVALID_ARGUMENT"}
    assert len(refused) == 2  # the other request's two attempts
    assert await _jobs_of(running, token) == list(made)

"""A call's request id: on every log line of the call, passed to the leader, answered back
(docs/errors.md, "Request ids"). Two replicas in one process, as test_replica_routing."""

from __future__ import annotations

import logging
import re

import pytest

from common.logs import RequestIdFilter
from tests.helpers import AwsNames, TokenDatabase, submit_request
from tests.integration.test_replica_routing import replicas


async def test_a_request_id_is_on_each_line_of_the_call_at_the_leader_too(
        aws_names: AwsNames, token_database: TokenDatabase,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdFilter())
    async with replicas(aws_names, token_database) as (_, follower):
        token = token_database.token("alice", "developer")
        call = follower.clients.submission.SubmitJob(
            submit_request(token), metadata=(("x-request-id", "trace-7f3a.1"),), timeout=20)
        answer = await call
        assert answer.error.code == "", answer.error
        assert (await call.trailing_metadata())["x-request-id"] == "trace-7f3a.1"
    # The scheduler's lines (the moto server's own log names the job's object too).
    about_the_job = [record for record in caplog.records if answer.job_id in record.getMessage()
                     and record.name.split(".")[0] in ("scheduler", "job_manager")]
    assert about_the_job, "the leader logs the job it queued"
    assert {getattr(record, "request_id", None) for record in about_the_job} == {"trace-7f3a.1"}


@pytest.mark.parametrize("sent", ["has spaces", "x" * 65, "<script>", ""])
async def test_a_request_id_that_is_not_a_short_plain_word_is_replaced_in_the_log(
        aws_names: AwsNames, token_database: TokenDatabase, caplog: pytest.LogCaptureFixture,
        sent: str) -> None:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdFilter())
    async with replicas(aws_names, token_database, count=1) as (alone,):
        token = token_database.token("alice", "developer")
        call = alone.clients.submission.SubmitJob(
            submit_request(token), metadata=(("x-request-id", sent),), timeout=20)
        answer = await call
        assert answer.error.code == "", answer.error
        answered = [name for name, _ in await call.trailing_metadata()]
        assert "x-request-id" not in answered  # what was sent is never echoed
    [queued] = [record for record in caplog.records
                if answer.job_id in record.getMessage() and record.name.startswith("job_")]
    assert re.fullmatch(r"[A-Z2-7]{8}", getattr(queued, "request_id", ""))  # one it made
    assert not sent or sent not in caplog.text

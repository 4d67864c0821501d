"""Taking over the original's table and bucket in place, and the way back (docs/migrating.md).

The original's records and objects (tests/data/original_records/, as the original wrote
them) are loaded into moto; the scheduler then starts on them with no migration step.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import gzip
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from common.identity import fingerprint
from job_manager.stores.dynamodb_job_store import STATUS_INDEX
from job_manager.stores.original_format import decode_original
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from scheduler.wiring.app import Scheduler
from scheduler.wiring.config import ConfigError, load_config
from tests.conftest import Running, scheduler_in
from tests.helpers import (
    REGION,
    UPLOAD_HEADERS,
    AwsNames,
    Clients,
    TokenDatabase,
    aws_client,
    aws_config,
    create_aws_resources,
    submit_request,
)
from tests.operations.support import scrape, value
from token_database.store import TokenRecord

ORIGINAL = Path(__file__).parent.parent / "data" / "original_records"
ITEMS: list[dict[str, Any]] = json.loads((ORIGINAL / "items.json").read_text())["items"]
JOB_OF: dict[str, str] = json.loads((ORIGINAL / "items.json").read_text())["job_id_by_status"]
OBJECTS: list[dict[str, Any]] = json.loads((ORIGINAL / "objects.json").read_text())
ROOT = Path(__file__).parent.parent.parent


def _item(status: str) -> dict[str, Any]:
    return copy.deepcopy(next(i for i in ITEMS if i["job_id"]["S"] == JOB_OF[status]))


def _body(key: str) -> bytes:
    return base64.b64decode(next(o for o in OBJECTS if o["key"] == key)["body_base64"])


def _iso(moment: datetime) -> dict[str, str]:
    return {"S": moment.astimezone(timezone_jst()).isoformat(timespec="microseconds")}


def timezone_jst() -> Any:
    return datetime.fromisoformat("2026-01-01T00:00:00+09:00").tzinfo


def load_original(names: AwsNames, items: list[dict[str, Any]] | None = None,
                  skip_objects: tuple[str, ...] = ()) -> None:
    """Put the original's items and objects (headers and tags as it wrote them) into moto."""
    dynamodb, s3 = aws_client("dynamodb", names.endpoint), aws_client("s3", names.endpoint)
    for item in items if items is not None else ITEMS:
        dynamodb.put_item(TableName=names.table, Item=item)
    for obj in OBJECTS:
        if obj["key"] in skip_objects:
            continue
        extra = {"ContentEncoding": obj["content_encoding"]} if obj["content_encoding"] else {}
        s3.put_object(Bucket=names.bucket, Key=obj["key"],
                      Body=base64.b64decode(obj["body_base64"]), ContentType=obj["content_type"],
                      ContentDisposition=obj["content_disposition"], **extra)
        s3.put_object_tagging(Bucket=names.bucket, Key=obj["key"],
                              Tagging={"TagSet": obj["tags"]})


def stored(names: AwsNames, job_id: str) -> dict[str, Any]:
    answer = aws_client("dynamodb", names.endpoint).get_item(
        TableName=names.table, Key={"job_id": {"S": job_id}}, ConsistentRead=True)
    return dict(answer["Item"])


def original_tokens(database: TokenDatabase) -> dict[str, str]:
    """The raw tokens the fixtures' jobs were submitted with, known to the token database."""
    tokens = {"developer": "developer-token", "admin": "admin-token", "guest": "guest-token"}
    for role, token in tokens.items():
        database.store.put(TokenRecord(fingerprint(token), f"original-{role}", role,
                                       datetime.now(UTC)))
    return tokens


async def _status(running: Running, token: str, job_id: str) -> pb.GetJobStatusResponse:
    return await running.clients.submission.GetJobStatus(
        pb.GetJobStatusRequest(token=token, job_id=job_id))


async def _report_success(running: Running, job_id: str, upload_url: str, raw: bytes) -> None:
    upload = await asyncio.to_thread(requests.put, upload_url, data=gzip.compress(raw),
                                     headers=UPLOAD_HEADERS, timeout=10)
    assert upload.status_code == 200
    answer = await running.clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(
            job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS))
    assert answer.error.code == "", answer.error


@pytest.fixture
def takeover(aws_names: AwsNames, token_database: TokenDatabase) -> dict[str, str]:
    """The original's table and bucket as it left them, its RUNNING job still in time."""
    running_item = _item("RUNNING")
    running_item["dequeued_at"] = _iso(datetime.now(UTC) - timedelta(seconds=10))
    load_original(aws_names, [*(i for i in ITEMS if i["status"]["S"] != "RUNNING"),
                              running_item])
    return original_tokens(token_database)


# --- takeover of each status -------------------------------------------------------------------
async def test_a_queued_job_of_the_original_is_handed_over_byte_for_byte(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        takeover: dict[str, str], aws_names: AwsNames) -> None:
    job_id = JOB_OF["QUEUED"]
    async with scheduler_in("aws", tmp_path, request, token_database) as running:
        queued = await _status(running, takeover["developer"], job_id)
        assert queued.status == job_pb2.JOB_STATUS_QUEUED, queued.error
        assigned = await running.clients.assign()
        assert assigned.job_id == job_id
        assert assigned.job.program.SerializeToString() == _body(f"{job_id}.in.proto")
        settings = assigned.job.settings
        assert (settings.backend, settings.n_shots, settings.timeout.seconds, settings.role) == (
            "emulator", 16, 120, "developer")
        item = stored(aws_names, job_id)
        # The first write replaced the original's record with this scheduler's form.
        assert "token" not in item
        assert item["owner_fingerprint"]["S"] == fingerprint(takeover["developer"])
        assert item["status"]["S"] == "RUNNING"


async def test_a_running_job_of_the_original_is_watched_and_completed_by_a_late_report(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        takeover: dict[str, str], aws_names: AwsNames) -> None:
    job_id = JOB_OF["RUNNING"]
    async with scheduler_in("aws", tmp_path, request, token_database) as running:
        refreshed = await running.clients.execution.RefreshUploadUrl(
            execution_pb2.RefreshUploadUrlRequest(job_id=job_id))
        assert refreshed.error.code == ""
        await _report_success(running, job_id, refreshed.upload_target.upload_url, b"\x0a\x01r")
        done = await _status(running, takeover["developer"], job_id)
        assert done.status == job_pb2.JOB_STATUS_COMPLETED
        assert "token" not in stored(aws_names, job_id)


async def test_a_running_job_past_its_deadline_times_out_at_takeover(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        aws_names: AwsNames) -> None:
    load_original(aws_names)  # its dequeued_at is a week ago; its timeout 120 s
    tokens = original_tokens(token_database)
    job_id = JOB_OF["RUNNING"]
    async with scheduler_in("aws", tmp_path, request, token_database) as running:
        for _ in range(100):
            answer = await _status(running, tokens["developer"], job_id)
            if answer.status == job_pb2.JOB_STATUS_TIMEOUT:
                break
            await asyncio.sleep(0.05)
        assert answer.status == job_pb2.JOB_STATUS_TIMEOUT
        assert "never reported" in answer.status_detail


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "CANCELLED"])
async def test_a_finished_job_of_the_original_answers_with_its_times(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        takeover: dict[str, str], status: str) -> None:
    job_id = JOB_OF[status]
    item = _item(status)
    owner = {"developer": takeover["developer"], "admin": takeover["admin"],
             "guest": takeover["guest"]}[item["role"]["S"]]
    async with scheduler_in("aws", tmp_path, request, token_database) as running:
        answer = await _status(running, owner, job_id)
        assert answer.error.code == "", answer.error
        assert answer.status == job_pb2.JobStatus.Value(f"JOB_STATUS_{status}")
        stamps = answer.execution_details.timestamps
        submitted = datetime.fromisoformat(item["submitted_at"]["S"])
        assert stamps.submitted_at.ToDatetime(tzinfo=UTC) == submitted
        # The original's epoch means "never": not shown as 1970.
        assert not stamps.HasField("compile_started_at")
        if status != "CANCELLED":
            assert stamps.HasField("dequeued_at") and stamps.HasField("finished_at")
        # Someone else's job stays invisible.
        other = running.token("mallory", "developer")
        assert (await _status(running, other, job_id)).error.code == "NOT_FOUND"


async def test_a_completed_job_of_the_original_gives_a_working_download(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        takeover: dict[str, str]) -> None:
    job_id = JOB_OF["COMPLETED"]
    async with scheduler_in("aws", tmp_path, request, token_database) as running:
        answer = await running.clients.submission.GetJobResult(
            pb.GetJobResultRequest(token=takeover["admin"], job_id=job_id))
        assert answer.error.code == "", answer.error
        download = await asyncio.to_thread(requests.get, answer.result.result_url,
                                           headers={"Accept-Encoding": "gzip"}, timeout=10)
        assert download.status_code == 200
        assert download.content == gzip.decompress(_body(f"{job_id}.out.proto.gz"))


# --- what cannot be read ------------------------------------------------------------------------
async def test_a_corrupted_record_and_a_missing_object_leave_every_other_job_served(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        aws_names: AwsNames, caplog: pytest.LogCaptureFixture) -> None:
    corrupted = _item("QUEUED")
    corrupted["job_id"] = {"S": str(uuid.uuid4())}
    corrupted["queued_at"] = {"S": "yesterday at noon"}
    no_backend = _item("QUEUED")
    no_backend["job_id"] = {"S": str(uuid.uuid4())}
    del no_backend["requested_backend"]
    no_program = _item("QUEUED")
    no_program["job_id"] = {"S": str(uuid.uuid4())}  # no object was ever stored for it
    load_original(aws_names, [*ITEMS, corrupted, no_backend, no_program])
    tokens = original_tokens(token_database)
    bad = [corrupted["job_id"]["S"], no_backend["job_id"]["S"]]

    async with scheduler_in("aws", tmp_path, request, token_database) as running:
        assigned = await running.clients.assign()
        assert assigned.job_id == JOB_OF["QUEUED"]  # the good one is served
        assert (await running.clients.assign()).job_id == ""
        for job_id in bad:
            answer = await _status(running, tokens["developer"], job_id)
            assert answer.error.code == "INTERNAL"
            assert job_id in answer.error.description
            assert "cannot be read" in answer.error.description
        lost = await _status(running, tokens["developer"], no_program["job_id"]["S"])
        assert lost.status == job_pb2.JOB_STATUS_FAILED
        assert "program" in lost.status_detail and "missing" in lost.status_detail
        samples = await scrape(running.scheduler.metrics_port)
        assert value(samples, "mqc3_unreadable_records_total") == 2
    for job_id, item in zip(bad, (corrupted, no_backend), strict=True):
        assert stored(aws_names, job_id) == item  # left untouched
        assert sum(job_id in r.getMessage() and "cannot be read" in r.getMessage()
                   for r in caplog.records if r.levelname == "ERROR") == 1  # logged once


# --- the scrub command -------------------------------------------------------------------------
def _command(names: AwsNames, *args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    flags = ["--dev", "--endpoint", names.endpoint, "--region", REGION, "-k", "testing",
             "-s", "testing", "--job_bucket_name_key", names.bucket_key,
             "--job_table_name_key", names.table_key,
             "--backend_status_parameter_name", names.backends_key]
    return subprocess.run([sys.executable, str(ROOT / "scheduler.py"), *args, *flags],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_scrub_tokens_rewrites_every_record_once_and_again_changes_nothing(
        aws_names: AwsNames) -> None:
    load_original(aws_names)
    first = _command(aws_names, "migrate", "scrub-tokens")
    assert first.returncode == 0, first.stderr
    assert f"rewrote {len(ITEMS)} records" in first.stdout
    for status, job_id in JOB_OF.items():
        item = stored(aws_names, job_id)
        assert "token" not in item, status
        assert item["owner_fingerprint"]["S"] == fingerprint(_item(status)["token"]["S"])
        assert item["status"]["S"] == status
    assert "developer-token" not in json.dumps(
        aws_client("dynamodb", aws_names.endpoint).scan(TableName=aws_names.table)["Items"])
    again = _command(aws_names, "migrate", "scrub-tokens")
    assert again.returncode == 0, again.stderr
    assert "rewrote 0 records" in again.stdout


def test_migrate_without_a_command_says_which_exist(aws_names: AwsNames) -> None:
    answer = _command(aws_names, "migrate")
    assert answer.returncode == 2
    assert "scrub-tokens" in answer.stderr and "to-original" in answer.stderr


# --- idempotency on the original's schema --------------------------------------------------------
async def test_two_schedulers_racing_one_key_on_the_originals_table_make_one_job(
        tmp_path: Path, token_database: TokenDatabase, aws_names: AwsNames) -> None:
    aws_names = create_aws_resources(aws_names.endpoint, uuid.uuid4().hex[:12],
                                     owner_index=False)  # the original's table, as it is
    description = aws_client("dynamodb", aws_names.endpoint).describe_table(
        TableName=aws_names.table)["Table"]
    assert [i["IndexName"] for i in description["GlobalSecondaryIndexes"]] == [STATUS_INDEX]
    token = token_database.token("alice", "developer")
    schedulers = [Scheduler(aws_config(aws_names, token_database.address)) for _ in range(2)]
    for scheduler in schedulers:
        await scheduler.start()
    clients = [Clients(s.submission_port, s.execution_port) for s in schedulers]
    try:
        key = [("x-mqc3-idempotency-key", "one-job")]
        answers = await asyncio.gather(*(
            c.submission.SubmitJob(submit_request(token), metadata=key)
            for c in clients for _ in range(3)))
        assert {a.error.code for a in answers} == {""}
        assert len({a.job_id for a in answers}) == 1
        jobs = [i for i in aws_client("dynamodb", aws_names.endpoint).scan(
            TableName=aws_names.table)["Items"] if "status" in i]
        assert [j["job_id"]["S"] for j in jobs] == [answers[0].job_id]
    finally:
        for client in clients:
            await client.close()
        for scheduler in schedulers:
            await scheduler.stop(grace_s=0)


# --- the way back --------------------------------------------------------------------------------
async def test_queued_jobs_go_back_to_the_originals_form(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        aws_names: AwsNames) -> None:
    async with scheduler_in("aws", tmp_path, request, token_database) as running:
        token = running.token("alice", "developer")
        ours = [(await running.clients.submission.SubmitJob(submit_request(token))).job_id
                for _ in range(3)]
        assert (await running.clients.assign()).job_id == ours[0]  # RUNNING: stays ours
    settings = {job_id: base64.b64decode(stored(aws_names, job_id)["settings"]["S"])
                for job_id in ours[1:]}
    back = await asyncio.to_thread(_command, aws_names, "migrate", "to-original")
    assert back.returncode == 0, back.stderr
    assert "wrote 2 queued jobs" in back.stdout
    fixture_keys = set(_item("QUEUED"))
    for job_id in ours[1:]:
        item = stored(aws_names, job_id)
        assert set(item) == fixture_keys  # every attribute the original writes, no other
        assert item["status"]["S"] == "QUEUED"
        assert item["token"]["S"] == f"sha256:{fingerprint(token)}"  # never the token
        values = {k: (None if "NULL" in v else next(iter(v.values()))) for k, v in item.items()}
        values["save_job"] = item["save_job"]["BOOL"]
        assert decode_original(values).settings == settings[job_id]
    assert "owner_fingerprint" in stored(aws_names, ours[0])
    again = await asyncio.to_thread(_command, aws_names, "migrate", "to-original")
    assert "wrote 0 queued jobs" in again.stdout


# --- the original's command line ---------------------------------------------------------------
async def test_the_originals_command_line_and_environment_start_the_scheduler(
        token_database: TokenDatabase, aws_names: AwsNames) -> None:
    env = {"JOB_BUCKET_NAME_KEY": aws_names.bucket_key,
           "DYNAMODB_JOB_TABLE_NAME_KEY": aws_names.table_key,
           "BACKEND_STATUS_PARAMETER_NAME": aws_names.backends_key,
           "AWS_REGION": REGION, "DYNAMODB_JOB_TABLE_GSI_NAME": STATUS_INDEX}
    argv = ["--port-for-submission", "127.0.0.1:0", "--port-for-execution", "127.0.0.1:0",
            "-at", token_database.address, "-k", "testing", "-s", "testing",
            "--endpoint", aws_names.endpoint, "--s3_endpoint", aws_names.endpoint,
            "--unify_backends", "--dev", "--metrics-port", "0"]
    scheduler = Scheduler(load_config(argv, env))
    await scheduler.start()
    clients = Clients(scheduler.submission_port, scheduler.execution_port)
    try:
        token = token_database.token("alice", "developer")
        submitted = await clients.submission.SubmitJob(submit_request(token))
        assert submitted.error.code == ""
        assert (await clients.assign("any-backend-name")).job_id == submitted.job_id
    finally:
        await clients.close()
        await scheduler.stop(grace_s=0)


async def test_a_table_without_the_status_index_is_named_at_start(
        token_database: TokenDatabase, moto_endpoint: str) -> None:
    names = create_aws_resources(moto_endpoint, uuid.uuid4().hex[:12])
    dynamodb = aws_client("dynamodb", moto_endpoint)
    dynamodb.delete_table(TableName=names.table)
    dynamodb.get_waiter("table_not_exists").wait(TableName=names.table)
    dynamodb.create_table(TableName=names.table, BillingMode="PAY_PER_REQUEST",
                          AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
                          KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}])
    scheduler = Scheduler(aws_config(names, token_database.address))
    with pytest.raises(ConfigError) as refused:
        await scheduler.start()
    await scheduler.stop(grace_s=0)
    assert "status-index" in str(refused.value)
    assert "\n" not in str(refused.value)


# --- the bucket contract -------------------------------------------------------------------------
def _object_contract(names: AwsNames, key: str) -> tuple[str, str, list[dict[str, str]]]:
    s3 = aws_client("s3", names.endpoint)
    head = s3.head_object(Bucket=names.bucket, Key=key)
    tags = s3.get_object_tagging(Bucket=names.bucket, Key=key)["TagSet"]
    return head["ContentType"], head.get("ContentDisposition"), sorted(
        tags, key=lambda t: t["Key"])


async def test_inputs_and_results_carry_the_originals_headers_and_tags(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        aws_names: AwsNames) -> None:
    async with scheduler_in("aws", tmp_path, request, token_database) as running:
        token = running.token("gus", "guest")
        job_id = (await running.clients.submission.SubmitJob(
            submit_request(token, timeout_s=60))).job_id
        assigned = await running.clients.assign()
        await _report_success(running, job_id, assigned.upload_target.upload_url, b"\x0a\x01x")
    # The original's objects of a guest's input and of a (admin's) result, as it wrote them.
    originals = {".in.proto": f"{JOB_OF['FAILED']}.in.proto",
                 ".out.proto.gz": f"{JOB_OF['COMPLETED']}.out.proto.gz"}
    for suffix, original_key in originals.items():
        fixture = next(o for o in OBJECTS if o["key"] == original_key)
        expected_tags = sorted(
            [dict(t, Value="guest") if t["Key"] == "token_role" else t for t in fixture["tags"]],
            key=lambda t: t["Key"])
        content_type, disposition, tags = _object_contract(aws_names, f"{job_id}{suffix}")
        assert (content_type, disposition) == (fixture["content_type"],
                                               fixture["content_disposition"]), suffix
        assert tags == expected_tags, suffix

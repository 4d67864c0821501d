"""The PayloadStore contract: every test runs against the local directory, the standalone
store (programs in the job database, results in a directory) and S3 (moto).

A result reaches S3 through its presigned URLs over real HTTP. The local store's URLs
point at the scheduler's own HTTP endpoint, which is not running here: the harness does
what that endpoint does (check the URL's signature, then save or load the result).
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import requests
from botocore.config import Config as BotoConfig
from requests.structures import CaseInsensitiveDict

from common.clock import FakeClock
from job_manager.stores import PayloadStore, SignedUrl, StoreError
from job_manager.stores.local_payload_store import (
    RESULTS_PATH,
    LocalPayloadStore,
    SqliteInputsPayloadStore,
)
from job_manager.stores.payload_store import input_key, result_key
from job_manager.stores.s3_payload_store import S3PayloadStore
from job_manager.stores.sqlite_job_store import SqliteJobStore
from job_manager.stores.url_signer import UrlSigner
from tests.helpers import REGION, UPLOAD_HEADERS

# Not on a whole second, so that rounding of expires_at shows.
START = datetime(2026, 5, 6, 7, 8, 9, 700_000, tzinfo=UTC)
LIFETIME = timedelta(minutes=10)
BASE_URL = "http://127.0.0.1:9"  # nothing listens: local URLs are checked, never fetched
RESULT = gzip.compress(b"\x0a\x03abc\x12\x02\xff\x00")

# (job id, body, hand-over): what a node PUTs through its URL (None: the final key's).
Upload = Callable[[str, bytes, int | None], Awaitable[None]]
# A download answers with the body and the headers (names in any case).
Download = Callable[[str], Awaitable[tuple[bytes, Mapping[str, str]]]]


@dataclass
class Backend:
    """A store, its clock, and how a node uploads and an owner downloads a result."""

    store: PayloadStore
    clock: FakeClock
    upload: Upload
    download: Download
    # Makes the store's container (directory, database, bucket) vanish, to provoke faults.
    remove_container: Callable[[], Awaitable[None]]


def new_job_id() -> str:
    return str(uuid.uuid4())


def _query(url: SignedUrl) -> tuple[str, str, str]:
    """The object name, ``expires`` and ``signature`` of a local URL."""
    parts = urlsplit(url.url)
    query = parse_qs(parts.query)
    return parts.path.rsplit("/", 1)[-1], query["expires"][0], query["signature"][0]


def _local_backend(tmp_path: Path) -> Backend:
    clock = FakeClock(START)
    directory = tmp_path / "payloads"
    store = LocalPayloadStore(
        directory, UrlSigner.from_key_file(tmp_path / "url.key"), BASE_URL, clock
    )

    async def remove_directory() -> None:
        shutil.rmtree(directory)

    return _served_locally(store, clock, remove_directory)


def _sqlite_inputs_backend(tmp_path: Path) -> Backend:
    clock = FakeClock(START)
    jobs = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store = SqliteInputsPayloadStore(tmp_path / "payloads",
                                     UrlSigner.from_key_file(tmp_path / "url.key"), BASE_URL,
                                     clock, jobs)
    return _served_locally(store, clock, jobs.close)  # the programs' container: the database


def _served_locally(store: LocalPayloadStore, clock: FakeClock,
                    remove_container: Callable[[], Awaitable[None]]) -> Backend:

    async def upload(job_id: str, body: bytes, handover: int | None = None) -> None:
        name, expires, signature = _query(store.upload_url(job_id, LIFETIME, handover))
        assert store.is_allowed("PUT", name, expires, signature)
        await store.save_result(name, body, dict(UPLOAD_HEADERS))

    async def download(job_id: str) -> tuple[bytes, Mapping[str, str]]:
        name, expires, signature = _query(store.download_url(job_id, LIFETIME))
        assert store.is_allowed("GET", name, expires, signature)
        stored = await store.load_result(name)
        assert stored is not None
        return stored.body, CaseInsensitiveDict(stored.headers)

    return Backend(store, clock, upload, download, remove_container)


def _s3_backend(moto_endpoint: str) -> Backend:
    clock = FakeClock(START)
    # Signed as production's client signs (scheduler/wiring/aws.py): SigV4, path-style.
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=BotoConfig(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )
    bucket = f"payloads-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    store = S3PayloadStore(client, bucket, clock)

    async def upload(job_id: str, body: bytes, handover: int | None = None) -> None:
        url = store.upload_url(job_id, LIFETIME, handover).url
        answer = await asyncio.to_thread(
            requests.put, url, data=body, headers=UPLOAD_HEADERS, timeout=10
        )
        assert answer.status_code == 200, answer.text

    async def download(job_id: str) -> tuple[bytes, Mapping[str, str]]:
        url = store.download_url(job_id, LIFETIME).url
        answer = await asyncio.to_thread(requests.get, url, stream=True, timeout=10)
        assert answer.status_code == 200, answer.text
        # The body as stored: requests would otherwise gunzip it (Content-Encoding: gzip).
        body = answer.raw.read(decode_content=False)
        return body, answer.headers

    async def remove_bucket() -> None:
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)

    return Backend(store, clock, upload, download, remove_bucket)


@pytest.fixture(params=["local", "sqlite-inputs", "s3"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "local":
        chosen = _local_backend(tmp_path)
    elif request.param == "sqlite-inputs":
        chosen = _sqlite_inputs_backend(tmp_path)
    else:
        chosen = _s3_backend(request.getfixturevalue("moto_endpoint"))
    yield chosen
    await chosen.store.close()
    if isinstance(chosen.store, SqliteInputsPayloadStore):
        await chosen.remove_container()  # closes its job database


@pytest.fixture
def store(backend: Backend) -> PayloadStore:
    return backend.store


# --- inputs --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "program",
    [
        pytest.param(b"\x08\x02\x12\x04\x08\x01\x10\x00", id="protobuf"),
        pytest.param(b"\xff\xfe\x00\x80\xc3\x28", id="not-utf-8"),
        pytest.param(b"", id="empty"),
        pytest.param(bytes(range(256)) * 4096, id="1MiB"),
    ],
)
async def test_get_input_returns_the_program_byte_for_byte(
    store: PayloadStore, program: bytes
) -> None:
    job_id = new_job_id()
    await store.put_input(job_id, program)
    assert await store.get_input(job_id) == program


async def test_inputs_of_different_jobs_are_kept_apart(store: PayloadStore) -> None:
    first, second = new_job_id(), new_job_id()
    await store.put_input(first, b"first")
    await store.put_input(second, b"second")
    assert await store.get_input(first) == b"first"
    assert await store.get_input(second) == b"second"


async def test_get_input_of_a_missing_job_is_none(store: PayloadStore) -> None:
    await store.put_input(new_job_id(), b"someone else's")
    assert await store.get_input(new_job_id()) is None


async def test_delete_input_removes_only_that_program(store: PayloadStore) -> None:
    deleted, kept = new_job_id(), new_job_id()
    await store.put_input(deleted, b"program")
    await store.put_input(kept, b"kept")
    await store.delete_input(deleted)
    assert await store.get_input(deleted) is None
    assert await store.get_input(kept) == b"kept"


async def test_delete_input_of_a_missing_job_is_fine(store: PayloadStore) -> None:
    job_id = new_job_id()
    await store.delete_input(job_id)
    await store.put_input(job_id, b"program")
    await store.delete_input(job_id)
    await store.delete_input(job_id)
    assert await store.get_input(job_id) is None


# --- results -------------------------------------------------------------------------------
async def test_result_exists_only_once_the_result_is_uploaded(backend: Backend) -> None:
    job_id = new_job_id()
    await backend.store.put_input(job_id, b"program")
    assert await backend.store.result_exists(job_id) is False
    await backend.upload(job_id, RESULT, None)
    assert await backend.store.result_exists(job_id) is True
    assert await backend.store.result_exists(new_job_id()) is False


async def test_a_downloaded_result_is_the_uploaded_bytes_with_its_content_encoding(
    backend: Backend,
) -> None:
    job_id = new_job_id()
    await backend.upload(job_id, RESULT, None)
    body, headers = await backend.download(job_id)
    assert body == RESULT
    assert headers.get("Content-Encoding") == "gzip"
    assert headers.get("Content-Type") == "application/protobuf"


# --- results of hand-overs (jobs that may be queued again: docs/protocol.md) -----------------
async def test_a_hand_overs_upload_is_its_own_until_promoted_to_the_final_result(
    backend: Backend,
) -> None:
    job_id, store = new_job_id(), backend.store
    await backend.upload(job_id, gzip.compress(b"lost"), 0)
    await backend.upload(job_id, RESULT, 1)
    assert (await store.result_exists(job_id, 1), await store.result_exists(job_id)) == (
        True, False)  # no hand-over writes the final result itself
    assert await store.promote_result(job_id, 1) is True
    body, headers = await backend.download(job_id)
    assert (body, headers.get("Content-Encoding"), headers.get("Content-Type")) == (
        RESULT, "gzip", "application/protobuf")
    # Promoted once, it stays that hand-over's: a repeated promotion (a retried report after
    # a crash) finds it, another hand-over's does not.
    assert await store.result_exists(job_id, 1) is True
    assert await store.promote_result(job_id, 1) is True
    assert await store.result_exists(job_id, 2) is False
    assert await store.promote_result(job_id, 2) is False
    await store.discard_results(job_id, [0, 1])
    assert await store.result_exists(job_id, 0) is False
    assert (await backend.download(job_id))[0] == RESULT  # the final result stays


async def test_a_hand_overs_url_names_its_own_key_and_never_the_final_one(
        store: PayloadStore) -> None:
    job_id = new_job_id()
    path = urlsplit(store.upload_url(job_id, LIFETIME, 2).url).path
    assert path.endswith(f"/{job_id}.handover-2.out.proto.gz"), path


# --- URLs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["upload_url", "download_url"])
async def test_a_url_expires_at_now_plus_its_lifetime_to_the_second(
    backend: Backend, kind: str
) -> None:
    job_id = new_job_id()
    signed: SignedUrl = getattr(backend.store, kind)(job_id, LIFETIME)
    assert signed.expires_at == START.replace(microsecond=0) + LIFETIME
    assert signed.expires_at.utcoffset() == timedelta(0)
    assert signed.expires_at.microsecond == 0

    backend.clock.advance(3600)
    later: SignedUrl = getattr(backend.store, kind)(job_id, timedelta(seconds=30))
    assert later.expires_at == START.replace(microsecond=0) + timedelta(seconds=3630)


async def test_upload_and_download_urls_name_the_result_object_only(store: PayloadStore) -> None:
    job_id, other = new_job_id(), new_job_id()
    up, down = store.upload_url(job_id, LIFETIME), store.download_url(job_id, LIFETIME)
    for signed in (up, down):
        path = urlsplit(signed.url).path
        assert path.endswith("/" + result_key(job_id)), signed.url
    assert up.url != down.url
    assert job_id not in store.upload_url(other, LIFETIME).url


# --- lifecycle and faults ------------------------------------------------------------------
async def test_close_is_idempotent_and_later_calls_raise_store_error(backend: Backend) -> None:
    await backend.store.close()
    await backend.store.close()
    with pytest.raises(StoreError):
        await backend.store.put_input(new_job_id(), b"program")


async def test_put_input_into_a_vanished_container_raises_store_error(backend: Backend) -> None:
    await backend.remove_container()
    with pytest.raises(StoreError):
        await backend.store.put_input(new_job_id(), b"program")


# --- S3 only --------------------------------------------------------------------------------
@pytest.fixture
async def s3(moto_endpoint: str) -> AsyncIterator[Backend]:
    chosen = _s3_backend(moto_endpoint)
    yield chosen
    await chosen.store.close()


@pytest.mark.parametrize("kind", ["upload_url", "download_url"])
async def test_s3_url_is_presigned_for_its_lifetime(s3: Backend, kind: str) -> None:
    signed: SignedUrl = getattr(s3.store, kind)(new_job_id(), LIFETIME)
    query = parse_qs(urlsplit(signed.url).query)
    assert query["X-Amz-Expires"] == [str(int(LIFETIME.total_seconds()))]


# --- local only: what the signed-URL endpoint relies on --------------------------------------
@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[Backend]:
    chosen = _local_backend(tmp_path)
    yield chosen
    await chosen.store.close()


def _local_store(backend: Backend) -> LocalPayloadStore:
    assert isinstance(backend.store, LocalPayloadStore)
    return backend.store


async def test_local_url_points_at_the_results_endpoint_with_its_expiry(local: Backend) -> None:
    store, job_id = _local_store(local), new_job_id()
    signed = store.upload_url(job_id, LIFETIME)
    assert signed.url.startswith(f"{BASE_URL}{RESULTS_PATH}/{result_key(job_id)}?")
    _, expires, _ = _query(signed)
    assert int(expires) == int(signed.expires_at.timestamp())


async def test_local_url_is_allowed_for_its_own_method_and_object(local: Backend) -> None:
    store, job_id = _local_store(local), new_job_id()
    assert store.is_allowed("PUT", *_query(store.upload_url(job_id, LIFETIME)))
    assert store.is_allowed("GET", *_query(store.download_url(job_id, LIFETIME)))


async def test_local_url_is_refused_for_another_method(local: Backend) -> None:
    store, job_id = _local_store(local), new_job_id()
    _, expires, signature = _query(store.upload_url(job_id, LIFETIME))
    for method in ("GET", "DELETE", "POST"):
        assert not store.is_allowed(method, result_key(job_id), expires, signature), method
    _, expires, signature = _query(store.download_url(job_id, LIFETIME))
    assert not store.is_allowed("PUT", result_key(job_id), expires, signature)


async def test_local_url_is_refused_for_another_object(local: Backend) -> None:
    store, job_id = _local_store(local), new_job_id()
    _, expires, signature = _query(store.upload_url(job_id, LIFETIME))
    for name in (result_key(new_job_id()), input_key(job_id), f"../{result_key(job_id)}"):
        assert not store.is_allowed("PUT", name, expires, signature), name


async def test_local_url_is_refused_with_a_tampered_signature_or_expiry(local: Backend) -> None:
    store, job_id = _local_store(local), new_job_id()
    name, expires, signature = _query(store.upload_url(job_id, LIFETIME))
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    assert not store.is_allowed("PUT", name, expires, flipped)
    assert not store.is_allowed("PUT", name, expires, "")
    assert not store.is_allowed("PUT", name, str(int(expires) + 3600), signature)
    assert not store.is_allowed("PUT", name, "", signature)
    assert not store.is_allowed("PUT", name, f"{expires}.0", signature)


async def test_local_url_is_refused_once_expired(local: Backend) -> None:
    store, job_id = _local_store(local), new_job_id()
    query = _query(store.upload_url(job_id, LIFETIME))
    local.clock.advance(LIFETIME.total_seconds() - 1)
    assert store.is_allowed("PUT", *query)
    local.clock.advance(2)
    assert not store.is_allowed("PUT", *query)


async def test_local_url_is_refused_by_a_store_with_another_key(
    local: Backend, tmp_path: Path
) -> None:
    job_id = new_job_id()
    query = _query(_local_store(local).upload_url(job_id, LIFETIME))
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = LocalPayloadStore(
        other_dir / "payloads",
        UrlSigner.from_key_file(other_dir / "url.key"),
        BASE_URL,
        local.clock,
    )
    try:
        assert not other.is_allowed("PUT", *query)
    finally:
        await other.close()


async def test_local_url_stays_valid_after_a_restart_with_the_same_key_file(
    local: Backend, tmp_path: Path
) -> None:
    job_id = new_job_id()
    query = _query(_local_store(local).upload_url(job_id, LIFETIME))
    await local.store.close()
    reopened = LocalPayloadStore(
        tmp_path / "payloads",
        UrlSigner.from_key_file(tmp_path / "url.key"),
        BASE_URL,
        local.clock,
    )
    try:
        assert reopened.is_allowed("PUT", *query)
    finally:
        await reopened.close()

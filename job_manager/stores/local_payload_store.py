"""PayloadStore in a local directory, with URLs served by the scheduler's own HTTP endpoint."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlencode

from common import private_files
from common.clock import Clock
from job_manager.model import JobRecord
from job_manager.stores.blocking import BlockingCalls
from job_manager.stores.errors import StoreError
from job_manager.stores.payload_store import (
    HANDOVER_META,
    ObjectTags,
    SignedUrl,
    handover_result_key,
    input_key,
    result_key,
)
from job_manager.stores.sqlite_job_store import SqliteJobStore
from job_manager.stores.url_signer import UrlSigner

# Where the HTTP endpoint serves results: {base_url}{RESULTS_PATH}/{object name}.
RESULTS_PATH = "/results"
# Headers a node's upload sets that a download must answer with (docs/protocol.md).
KEPT_HEADERS = ("Content-Type", "Content-Encoding", "Content-Disposition")


# A job's files: {job_id}.in.proto, {job_id}.out.proto.gz, a hand-over's own
# {job_id}.handover-N.out.proto.gz, and each result's .headers.json.
_PAYLOAD_NAME = re.compile(
    r"^([0-9a-fA-F-]{36})\.(in\.proto|(?:handover-[0-9]+\.)?out\.proto\.gz(\.headers\.json)?)$")


@dataclass(frozen=True)
class Swept:
    """What a sweep removed, and what it kept because the database looks restored."""

    files: int
    jobs: int
    temporary: int
    kept_files: int = 0  # files no job record names, kept: some are newer than every record
    kept_jobs: int = 0
    newer_files: int = 0  # of those kept, how many are newer than the newest record


@dataclass(frozen=True)
class StoredResult:
    """A result's bytes as uploaded, with the headers the upload carried."""

    body: bytes
    headers: dict[str, str]


_temporary_names = itertools.count()
PROBE_NAME = ".health-probe"  # the health probe's file (never a result's name)
PROBE_BYTES = b"\0" * 4096  # a write that needs room on a disk, unlike an empty file
# A temporary file is never written through a link (common/private_files.py).
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def _write_atomically(path: Path, data: bytes) -> None:
    """Write a file whole or not at all, durably (fsync before the rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_temporary_names)}.tmp")
    try:
        fd = os.open(tmp, _NEW_FILE, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ResultSink:
    """A result being uploaded: its bytes go to a temporary file as they arrive, and the
    result is kept whole (fsync, then rename) or not at all. Memory stays flat."""

    def __init__(self, store: LocalPayloadStore, object_name: str) -> None:
        self._store = store
        self._name = object_name
        self._path = store.directory / object_name
        self._tmp = self._path.with_name(
            f".{object_name}.{os.getpid()}.{next(_temporary_names)}.tmp")
        self._file: BinaryIO | None = None
        self.size = 0

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        await self._store.calls.run(self._write, chunk)

    def _write(self, chunk: bytes) -> None:
        if self._file is None:
            fd = os.open(self._tmp, _NEW_FILE, 0o600)
            self._file = os.fdopen(fd, "wb")
        self._file.write(chunk)

    async def keep(self, headers: dict[str, str]) -> None:
        """Make the upload the result, with the headers its download is to answer with."""
        def finish() -> None:
            if self._file is None:
                self._write(b"")
            assert self._file is not None
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            _write_atomically(self._store.headers_path(self._name), json.dumps(headers).encode())
            os.replace(self._tmp, self._path)

        await self._store.calls.run(finish)

    async def discard(self) -> None:
        def remove() -> None:
            if self._file is not None:
                self._file.close()
            self._tmp.unlink(missing_ok=True)

        await self._store.calls.run(remove)


class LocalPayloadStore:
    """Objects are files in one directory; each is written whole or not at all."""

    def __init__(self, directory: Path, signer: UrlSigner, base_url: str, clock: Clock) -> None:
        private_files.private_directory(directory)  # ours alone: uploads land here
        self._dir = self.directory = directory
        self._signer = signer
        self.base_url = base_url.rstrip("/")  # may be set once the HTTP port is known (serve_at)
        self._clock = clock
        self._calls = self.calls = BlockingCalls("local-payloads", max_workers=4,
                                                 errors=(OSError,))

    def serve_at(self, base_url: str) -> None:
        """Sign URLs for the HTTP endpoint at ``base_url`` (known once its port is bound)."""
        self.base_url = base_url.rstrip("/")

    # --- PayloadStore -----------------------------------------------------------
    async def put_input(self, job_id: str, program: bytes, tags: ObjectTags | None = None) -> None:
        # Tags are for S3 bucket rules; a directory has none.
        await self._calls.run(_write_atomically, self._dir / input_key(job_id), program)

    async def get_input(self, job_id: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                return (self._dir / input_key(job_id)).read_bytes()
            except FileNotFoundError:
                return None

        return await self._calls.run(read)

    async def probe_results(self) -> None:
        """Write a file where results go, and remove it: whether uploads can be stored
        (the health probe's; StoreError when the directory refuses writes)."""
        def write_and_remove() -> None:
            path = self._dir / PROBE_NAME
            _write_atomically(path, PROBE_BYTES)
            path.unlink(missing_ok=True)

        await self._calls.run(write_and_remove)

    async def delete_input(self, job_id: str) -> None:
        await self._calls.run((self._dir / input_key(job_id)).unlink, True)

    def upload_url(self, job_id: str, expires_in: timedelta,
                   handover: int | None = None) -> SignedUrl:
        key = result_key(job_id) if handover is None else handover_result_key(job_id, handover)
        return self._signed_url("PUT", key, expires_in)

    def download_url(self, job_id: str, expires_in: timedelta) -> SignedUrl:
        return self._signed_url("GET", result_key(job_id), expires_in)

    async def result_exists(self, job_id: str, handover: int | None = None) -> bool:
        if handover is None:
            return await self._calls.run((self._dir / result_key(job_id)).exists)
        return await self._calls.run(self._handover_result, job_id, handover)

    def _handover_result(self, job_id: str, handover: int) -> bool:
        if (self._dir / handover_result_key(job_id, handover)).exists():
            return True
        final = result_key(job_id)
        return ((self._dir / final).exists()
                and self._headers(final).get(HANDOVER_META) == str(handover))

    async def promote_result(self, job_id: str, handover: int) -> bool:
        return await self._calls.run(self._promote, job_id, handover)

    def _promote(self, job_id: str, handover: int) -> bool:
        """The final result's headers (naming the hand-over), then its body by a rename: a
        crash in between leaves the hand-over's file, and the next report promotes it again."""
        source, final = handover_result_key(job_id, handover), result_key(job_id)
        if not (self._dir / source).exists():
            return self._handover_result(job_id, handover)  # promoted before, or never
        headers = {**self._headers(source), HANDOVER_META: str(handover)}
        _write_atomically(self.headers_path(final), json.dumps(headers).encode())
        os.replace(self._dir / source, self._dir / final)
        self.headers_path(source).unlink(missing_ok=True)
        return True

    async def discard_results(self, job_id: str, handovers: Sequence[int]) -> None:
        def remove() -> None:
            for n in handovers:
                name = handover_result_key(job_id, n)
                (self._dir / name).unlink(missing_ok=True)
                self.headers_path(name).unlink(missing_ok=True)

        await self._calls.run(remove)

    def _headers(self, object_name: str) -> dict[str, str]:
        try:
            headers = json.loads(self.headers_path(object_name).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return headers if isinstance(headers, dict) else {}

    async def seal_result(self, job_id: str, tags: ObjectTags) -> None:
        pass  # tags select S3 lifecycle rules and policies; a directory has neither

    # --- standalone housekeeping (scheduler/operations/housekeeping.py) -------------------------
    async def sweep(self, existing: Callable[[list[str]], Awaitable[set[str]]],
                    older_than_s: float, newest_record: datetime | None) -> Swept:
        """Remove files older than ``older_than_s`` that belong to no job ``existing`` knows,
        and temporary files a crash left.

        A file no record names but newer than the newest record (``newest_record``; None:
        there is none) is a sign of a job database restored from an older copy: then no
        such file is removed, and the counts say what was kept (docs/design.md,
        "Restoring a standalone data directory")."""
        def old_files() -> tuple[dict[str, list[tuple[Path, float]]], list[Path]]:
            horizon = time.time() - older_than_s
            by_job: dict[str, list[tuple[Path, float]]] = {}
            temporary: list[Path] = []
            for path in self._dir.iterdir():
                if not path.is_file() or (modified := path.stat().st_mtime) > horizon:
                    continue
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    temporary.append(path)
                elif (match := _PAYLOAD_NAME.match(path.name)) is not None:
                    by_job.setdefault(match.group(1), []).append((path, modified))
            return by_job, temporary

        by_job, temporary = await self._calls.run(old_files)
        known = await existing(sorted(by_job))
        orphans = {job_id: files for job_id, files in by_job.items() if job_id not in known}
        paths = [path for files in orphans.values() for path, _ in files]
        limit = newest_record.timestamp() if newest_record is not None else float("-inf")
        newer = sum(1 for files in orphans.values() for _, modified in files if modified > limit)
        doomed = temporary if newer else paths + temporary

        def remove() -> None:
            for path in doomed:
                path.unlink(missing_ok=True)

        await self._calls.run(remove)
        if newer:
            return Swept(files=0, jobs=0, temporary=len(temporary), kept_files=len(paths),
                         kept_jobs=len(orphans), newer_files=newer)
        return Swept(files=len(paths), jobs=len(orphans), temporary=len(temporary))

    async def jobs_with_results(self) -> set[str]:
        """The ids of every job whose result file is here (one listing of the directory)."""
        def listing() -> set[str]:
            return {match.group(1) for path in self._dir.iterdir()
                    if (match := _PAYLOAD_NAME.match(path.name)) is not None
                    and match.group(2) == "out.proto.gz"}

        return await self._calls.run(listing)

    async def delete_job_files(self, job_id: str) -> None:
        """Remove every file of one job (its program, results and the results' headers)."""
        names = (input_key(job_id), result_key(job_id), f"{result_key(job_id)}.headers.json")

        def remove() -> None:
            for name in names:
                (self._dir / name).unlink(missing_ok=True)
            for path in self._dir.glob(f"{job_id}.handover-*"):  # uploads of lost hand-overs
                path.unlink(missing_ok=True)

        await self._calls.run(remove)

    async def close(self) -> None:
        self._calls.close()

    # --- what the HTTP endpoint needs ------------------------------------------------
    def is_allowed(self, method: str, object_name: str, expires: str, signature: str) -> bool:
        """True when a request carries a valid, unexpired signature for this access."""
        # Anything else than ASCII digits and hex is no signature we made (and would make
        # int() or compare_digest raise).
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
            return False
        if not (signature.isascii() and signature.isalnum() and len(signature) <= 128):
            return False
        return self._signer.verify(
            method, object_name, int(expires), signature, self._clock.now().timestamp()
        )

    def result_sink(self, object_name: str) -> ResultSink:
        """Where an upload's bytes go as they arrive."""
        return ResultSink(self, object_name)

    async def save_result(self, object_name: str, body: bytes, headers: dict[str, str]) -> None:
        """Keep an uploaded result and the headers to answer its download with."""
        sink = self.result_sink(object_name)
        try:
            await sink.write(body)
            await sink.keep({name: headers[name] for name in KEPT_HEADERS if name in headers})
        except BaseException:
            await sink.discard()
            raise

    async def load_result(self, object_name: str) -> StoredResult | None:
        """An uploaded result, or None."""

        def read() -> StoredResult | None:
            try:
                body = (self._dir / object_name).read_bytes()
            except FileNotFoundError:
                return None
            return StoredResult(body=body, headers=self._headers(object_name))

        return await self._calls.run(read)

    def headers_path(self, object_name: str) -> Path:
        return self._dir / f"{object_name}.headers.json"

    def _signed_url(self, method: str, object_name: str, expires_in: timedelta) -> SignedUrl:
        expires_at = self._clock.now() + expires_in
        expires = int(expires_at.timestamp())
        query = urlencode(
            {"expires": expires, "signature": self._signer.sign(method, object_name, expires)}
        )
        return SignedUrl(
            url=f"{self.base_url}{RESULTS_PATH}/{object_name}?{query}",
            expires_at=expires_at.replace(microsecond=0),
        )


class SqliteInputsPayloadStore(LocalPayloadStore):
    """The standalone PayloadStore: programs in the job database's ``inputs`` table,
    written in the same transaction as their job's record; results stay files (nodes
    upload them over HTTP). Programs of a data directory written before programs moved
    into the database (``{job_id}.in.proto`` files) are still read and deleted.
    (docs/design.md, "Standalone storage".)"""

    def __init__(self, directory: Path, signer: UrlSigner, base_url: str, clock: Clock,
                 jobs: SqliteJobStore) -> None:
        super().__init__(directory, signer, base_url, clock)
        self._jobs = jobs

    async def create_with_input(self, record: JobRecord, program: bytes) -> None:
        await self._database().create_with_input(record, program)

    async def get_inputs(self, job_ids: Sequence[str]) -> dict[str, bytes]:
        return await self._database().get_inputs(job_ids)

    async def put_input(self, job_id: str, program: bytes, tags: ObjectTags | None = None) -> None:
        await self._database().put_input(job_id, program)

    async def get_input(self, job_id: str) -> bytes | None:
        program = await self._database().get_input(job_id)
        return program if program is not None else await super().get_input(job_id)

    async def delete_input(self, job_id: str) -> None:
        await self._database().delete_input(job_id)
        await super().delete_input(job_id)  # an older data directory's file, if any

    def _database(self) -> SqliteJobStore:
        """The job database, while this store is open (the stack closes each on its own)."""
        if self._calls.closed:
            raise StoreError("local-payloads: the store is closed")
        return self._jobs

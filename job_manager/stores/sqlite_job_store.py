"""JobStore on a SQLite file: the standalone mode's record of every job, and its program.

Programs live in an ``inputs`` table beside the ``jobs`` table, so that a submission's
program and record are one transaction under one group commit (docs/design.md,
"Standalone storage"). SqliteInputsPayloadStore (local_payload_store.py) serves them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

from common import private_files
from job_manager.model import RECORD_FORMAT, JobRecord, JobStatus, QueuedRow
from job_manager.stores import codec
from job_manager.stores.blocking import BlockingCalls
from job_manager.stores.errors import KeyTaken, RecordTooNew, RecordUnreadable, StoreError
from job_manager.stores.fence import Fence
from job_manager.stores.job_store import Document, Reached
from job_manager.stores.unreadable import UnreadableRecords

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    owner_fingerprint TEXT NOT NULL,
    idempotency_key TEXT,
    submitted_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, job_id);
-- A listing's page walks one of these two in its order and stops at the page's end
-- (list_newest_first); the previous version's jobs_by_owner lacked job_id, so each page
-- sorted the rows of an instant, and every owner's page scanned and sorted the table.
CREATE INDEX IF NOT EXISTS jobs_by_owner_newest ON jobs (owner_fingerprint, submitted_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_newest ON jobs (submitted_at, job_id);
DROP INDEX IF EXISTS jobs_by_owner;
CREATE INDEX IF NOT EXISTS jobs_by_idempotency_key
    ON jobs (owner_fingerprint, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The scheduler's own small documents (bookings, sessions), each written whole at its
-- next version (read_document, write_document).
CREATE TABLE IF NOT EXISTS documents (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS inputs (
    job_id TEXT PRIMARY KEY,
    program BLOB NOT NULL
);
"""

# A record's format (none written: 1), or NULL for text that is not JSON, which no
# transition touches (docs/records.md).
_FORMAT_OF_RECORD = ("CASE WHEN json_valid(record) "
                     "THEN coalesce(json_extract(record, '$.format_version'), 1) END")

Write = Callable[[sqlite3.Connection], object]
# A recovery's page: its last job id, its size, the plain-shaped records' values (JSON
# text), the other records whole (job id, stored text).
_Page = tuple[str, int, str, list[tuple[str, str]]]
RECOVERY_MMAP_BYTES = 4 * 1024**3  # at most; SQLite maps no more than the file holds


# Whether a record has a plain one's shape (docs/design.md, "A queued job in memory"),
# decided by SQLite: valid JSON, no field beyond the plain ones (codec.PLAIN_FIELDS), no
# null (this code writes none; a string holding "null" merely goes the slow way), so
# that a field read out as null is one not there. Its values are then read out as JSON
# and _lean_of makes codec.decode_lean's test on them. Any other record is read whole
# and goes through codec.decode_lean and codec.decode, as before.
_PLAIN_SHAPE = (
    "CASE WHEN NOT json_valid(record) THEN 0 WHEN json_remove(record, "
    + ", ".join(f"'$.{name}'" for name in sorted(codec.PLAIN_FIELDS))
    + ") = '{}' AND instr(record, 'null') = 0 THEN 1 ELSE 0 END"
)
# The fields read out of a plain-shaped record, as one JSON array (null: not there). A
# multi-path json_extract copies each value's JSON text as the record holds it (escapes,
# digits and all), so json.loads gives the very values it gives for the whole record.
_PLAIN_VALUES = ("job_id", "backend", "owner_name", "owner_fingerprint", "role",
                 "sdk_version", "save_job", "settings", "timeout_ms", "input_size_bytes",
                 "queued_at", "submitted_at", "format_version", "result_raw_size_bytes",
                 "result_encoded_size_bytes")
# A recovery's page of QUEUED rows as one row: its last job id, its size, the
# plain-shaped records' values as one JSON text ([job_id, [values]] each),
# and the ids of the others. SQLite builds it in one step with the GIL released, so the
# page is read while the event loop queues the one before; a row at a time took the GIL
# back for every row, each time waiting for the loop to let it go (list_queued).
_QUEUED_PAGE = (
    "SELECT max(job_id), count(*), json_group_array(json_array(job_id, json_extract(record, "
    + ", ".join(f"'$.{name}'" for name in _PLAIN_VALUES)
    + "))) FILTER (WHERE plain), json_group_array(job_id) FILTER (WHERE NOT plain) "
    f"FROM (SELECT job_id, record, {_PLAIN_SHAPE} AS plain FROM jobs "
    "WHERE status = :status AND job_id > :after ORDER BY job_id LIMIT :size)"
)


class SqliteJobStore:
    """One connection, used from one thread: SQLite serializes writes anyway (and one
    more, read-only, for listings: docs/design.md, "Standalone storage").

    Writes are group-committed: those that arrive while a commit is under way go
    together in the next transaction, one fsync for all of them, and each caller is
    answered only once its write is durable.
    """

    def __init__(self, path: Path, page_size: int = 500,
                 key_window: timedelta = timedelta(hours=24),
                 unreadable: UnreadableRecords | None = None,
                 queued_page_size: int = 5000) -> None:
        self._unreadable = UnreadableRecords() if unreadable is None else unreadable
        self._path = path
        self._page_size = page_size
        # A recovery's pages are larger: each costs the reader thread two waits for the
        # GIL while the event loop queues the page before (list_queued).
        self._queued_page_size = queued_page_size
        self._key_window = key_window
        self._calls = BlockingCalls("sqlite-jobs", max_workers=1,
                                    errors=(sqlite3.Error, OSError))
        self._conn: sqlite3.Connection | None = None
        # Listings read on a connection and thread of their own, beside the writer (WAL
        # lets them), so a long one never holds up a submission, a hand-over or a report.
        self._listing_calls = BlockingCalls("sqlite-listings", max_workers=1,
                                            errors=(sqlite3.Error,))
        self._listing_conn: sqlite3.Connection | None = None
        self._pending: list[tuple[Write, asyncio.Future[object]]] = []
        self._committer: asyncio.Task[None] | None = None

    def _connection(self) -> sqlite3.Connection:
        # Opened lazily, inside the store's one thread, which then owns it.
        if self._conn is None:
            private_files.private_file(self._path)  # 0600, ours, no link: before SQLite opens it
            conn = sqlite3.connect(self._path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def _listing_connection(self) -> sqlite3.Connection:
        # Opened lazily, inside the listings' thread, once the writer made the schema.
        if self._listing_conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA busy_timeout=5000")
            self._listing_conn = conn
        return self._listing_conn

    async def open(self) -> None:
        """Create the file and the schema now rather than on the first call."""
        await self._calls.run(self._connection)

    async def raise_fence(self, fence: Fence) -> None:
        pass  # one scheduler per data directory (leadership/lock.py): no fence

    async def create(self, record: JobRecord, fence: Fence | None = None) -> None:
        # No fence to check: one scheduler per data directory (leadership/lock.py).
        await self._write(self._insert(record, None))

    async def create_with_input(self, record: JobRecord, program: bytes) -> None:
        """Store a new record and its program in one transaction: both or neither.

        Refused as ``create`` is (StoreError, KeyTaken), and then nothing is stored."""
        await self._write(self._insert(record, program))

    def _insert(self, record: JobRecord, program: bytes | None) -> Write:
        row = self._row(record)
        window_start = (record.submitted_at - self._key_window).astimezone(UTC).isoformat()

        def insert(conn: sqlite3.Connection) -> None:
            if record.idempotency_key and conn.execute(
                "SELECT 1 FROM jobs WHERE owner_fingerprint = ? AND idempotency_key = ? "
                "AND submitted_at > ? LIMIT 1",
                (record.owner_fingerprint, record.idempotency_key, window_start),
            ).fetchone():
                raise KeyTaken(record.idempotency_key)
            try:
                conn.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?)", row)
            except sqlite3.IntegrityError:
                raise StoreError(f"job {record.job_id} already exists") from None
            if program is not None:
                # Its job row was new, so no program can be there but a stray one.
                conn.execute("INSERT OR REPLACE INTO inputs VALUES (?, ?)",
                             (record.job_id, program))

        return insert

    # --- programs (served by SqliteInputsPayloadStore) ------------------------------
    async def put_input(self, job_id: str, program: bytes) -> None:
        """Keep a program on its own (the job's record is written apart)."""
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO inputs VALUES (?, ?)", (job_id, program))

        await self._write(insert)

    async def get_input(self, job_id: str) -> bytes | None:
        """A job's program, or None when the table holds none."""
        def select() -> bytes | None:
            row = (
                self._connection()
                .execute("SELECT program FROM inputs WHERE job_id = ?", (job_id,))
                .fetchone()
            )
            return bytes(row[0]) if row else None

        return await self._calls.run(select)

    async def get_inputs(self, job_ids: Sequence[str]) -> dict[str, bytes]:
        """The programs the table holds of these jobs, by job id: one query."""
        def select() -> dict[str, bytes]:
            marks = ", ".join("?" * len(job_ids))
            rows = self._connection().execute(
                f"SELECT job_id, program FROM inputs WHERE job_id IN ({marks})", list(job_ids))
            return {job_id: bytes(program) for job_id, program in rows}

        return await self._calls.run(select) if job_ids else {}

    async def delete_input(self, job_id: str) -> None:
        """Remove a job's program; no error when there is none."""
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM inputs WHERE job_id = ?", (job_id,))

        await self._write(delete)

    async def get(self, job_id: str) -> JobRecord | None:
        def select() -> str | None:
            row = (
                self._connection()
                .execute("SELECT record FROM jobs WHERE job_id = ?", (job_id,))
                .fetchone()
            )
            return row[0] if row else None

        text = await self._calls.run(select)
        return self._record(job_id, text) if text else None

    def _record(self, job_id: str, text: str) -> JobRecord:
        """The stored text as a record; RecordUnreadable (reported once) when it is not one."""
        try:
            return codec.decode(json.loads(text))
        except (KeyError, ValueError, TypeError, ArithmeticError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            self._unreadable.saw(job_id, why)
            raise RecordUnreadable(job_id, why) from None

    async def transition(self, before: JobRecord, after: JobRecord,
                         fence: Fence | None = None) -> bool:
        if before.read_only:
            raise RecordTooNew(before.job_id, before.format_version)
        to_set, to_remove = codec.changes(codec.encode(before), codec.encode(after))
        # A JSON merge patch: a null removes its attribute; others in the record stay.
        patch = json.dumps({**to_set, **dict.fromkeys(to_remove)})
        values = (after.status.value, patch, after.job_id, before.status.value, RECORD_FORMAT)

        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE jobs SET status = ?, record = json_patch(record, ?) "
                f"WHERE job_id = ? AND status = ? AND {_FORMAT_OF_RECORD} <= ?", values)
            if cursor.rowcount == 1:
                return True
            stored = conn.execute(f"SELECT {_FORMAT_OF_RECORD} FROM jobs WHERE job_id = ?",
                                  (after.job_id,)).fetchone()
            if stored and isinstance(stored[0], int) and stored[0] > RECORD_FORMAT:
                raise RecordTooNew(after.job_id, stored[0])
            return False

        return bool(await self._write(update))

    async def _write(self, write: Write) -> object:
        """Queue a write for the next group commit; returns once it is durable."""
        if self._calls.closed:
            raise StoreError("sqlite-jobs: the store is closed")
        answer: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending.append((write, answer))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        return await answer

    async def _commit_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = await self._calls.run(self._commit, [write for write, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiting caller must get an answer
                failure = exc if isinstance(exc, StoreError) else StoreError(f"sqlite-jobs: {exc}")
                outcomes = [failure] * len(batch)
            for (_, answer), outcome in zip(batch, outcomes, strict=True):
                if answer.done():
                    continue  # its caller went away
                if isinstance(outcome, BaseException):
                    answer.set_exception(outcome)
                else:
                    answer.set_result(outcome)

    def _commit(self, writes: list[Write]) -> list[object]:
        """One transaction for every write; a write refused on its own fails alone."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        outcomes: list[object] = []
        try:
            for write in writes:
                try:
                    outcomes.append(write(conn))
                except (StoreError, KeyTaken) as exc:  # refused alone; the others commit
                    outcomes.append(exc)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    async def list_by_status(self, status: JobStatus) -> AsyncIterator[JobRecord]:
        after = ""
        while True:
            page = await self._calls.run(self._page, status, after)
            for job_id, text in page:
                after = job_id
                try:
                    yield self._record(job_id, text)
                except RecordUnreadable:
                    continue  # reported; the others are served
            if len(page) < self._page_size:
                return

    def _page(self, status: JobStatus, after: str) -> list[tuple[str, str]]:
        return (
            self._connection()
            .execute(
                "SELECT job_id, record FROM jobs WHERE status = ? AND job_id > ? "
                "ORDER BY job_id LIMIT ?",
                (status.value, after, self._page_size),
            )
            .fetchall()
        )

    async def list_queued(self) -> AsyncIterator[JobRecord | QueuedRow]:
        """Every QUEUED record; a plain one as a QueuedRow, no JobRecord built for it
        (docs/design.md, "A queued job in memory"). SQLite reads the plain records'
        values out of them (_QUEUED_PAGE) while the page before is used; the others are
        read whole. The file is memory-mapped meanwhile: a recovery reads every queued
        row in job id order, scattered over the file, and a read() per page of it costs
        about a sixth of a million jobs' recovery; the mapping ends with the reading."""
        await self._calls.run(self._map, RECOVERY_MMAP_BYTES)
        reading: asyncio.Future[_Page] | None = None
        try:
            reading = self._calls.start(self._queued_page, "")
            while True:
                last, count, plain, others = await reading
                if count == self._queued_page_size:
                    reading = self._calls.start(self._queued_page, last)
                again = []
                for job_id, values in json.loads(plain):
                    lean = _lean_of(job_id, values)
                    if lean is None:
                        again.append(job_id)
                    else:
                        yield lean
                if again:
                    others += await self._calls.run(self._records, again)
                for job_id, text in others:
                    try:
                        lean = codec.decode_lean(json.loads(text))
                    except (KeyError, ValueError, TypeError, ArithmeticError, AttributeError):
                        lean = None  # not a record: decoded whole, _record reports why
                    try:
                        yield lean or self._record(job_id, text)
                    except RecordUnreadable:
                        continue  # reported; the others are served
                if count < self._queued_page_size:
                    return
        finally:
            if reading is not None:
                reading.cancel()  # a page left (the caller stopped early) is not awaited
            await self._calls.run(self._map, 0)

    def _queued_page(self, after: str) -> _Page:
        """The QUEUED rows after ``after``: the last id, how many, the plain records'
        values as one JSON text, and the other records whole."""
        last, count, plain, others = self._connection().execute(_QUEUED_PAGE, {
            "status": JobStatus.QUEUED.value, "after": after,
            "size": self._queued_page_size}).fetchone()
        return last, count, plain or "[]", self._records(json.loads(others or "[]"))

    def _records(self, job_ids: list[str]) -> list[tuple[str, str]]:
        """The stored text of each of these records, in job id order."""
        marks = ",".join("?" * len(job_ids))
        return self._connection().execute(
            f"SELECT job_id, record FROM jobs WHERE job_id IN ({marks}) ORDER BY job_id",
            job_ids).fetchall() if job_ids else []

    def _map(self, size: int) -> None:
        self._connection().execute(f"PRAGMA mmap_size={int(size)}")

    async def list_newest_first(self, owner_fingerprint: str | None, since: datetime,
                                until: datetime, batch: int = 0
                                ) -> AsyncIterator[JobRecord | Reached]:
        if self._conn is None:
            await self.open()  # the schema, before the listings' connection reads it
        size = batch or self._page_size
        after = (_sortable(until), "\uffff")  # past every job id at that instant
        while True:
            page = await self._listing_calls.run(self._newest_page, owner_fingerprint,
                                                 _sortable(since), after, size)
            for submitted, job_id, text in page:
                after = (submitted, job_id)
                try:
                    yield self._record(job_id, text)
                except RecordUnreadable:
                    continue  # reported; the others are served
            if len(page) < size:
                return

    def _newest_page(self, owner: str | None, since: str, after: tuple[str, str],
                     size: int) -> list[tuple[str, str, str]]:
        """The next ``size`` rows before ``after``: a walk down jobs_by_owner_newest (or,
        for every owner, jobs_newest) from that key, with no sort (docs/protocol.md)."""
        owned = "owner_fingerprint = ? AND " if owner is not None else ""
        return (
            self._listing_connection()
            .execute(
                f"SELECT submitted_at, job_id, record FROM jobs WHERE {owned}"
                "submitted_at >= ? AND (submitted_at, job_id) < (?, ?) "
                "ORDER BY submitted_at DESC, job_id DESC LIMIT ?",
                (*([owner] if owner is not None else []), since, *after, size),
            )
            .fetchall()
        )

    async def find_by_idempotency_key(self, owner_fingerprint: str, key: str) -> JobRecord | None:
        def select() -> tuple[str, str] | None:
            row: tuple[str, str] | None = (
                self._connection()
                .execute(
                    "SELECT job_id, record FROM jobs WHERE owner_fingerprint = ? "
                    "AND idempotency_key = ? ORDER BY submitted_at DESC LIMIT 1",
                    (owner_fingerprint, key),
                )
                .fetchone()
            )
            return row

        row = await self._calls.run(select)
        return self._record(*row) if row else None

    # --- standalone housekeeping (scheduler/operations/housekeeping.py) -------------------------
    async def existing(self, job_ids: list[str]) -> set[str]:
        """Which of ``job_ids`` have a record."""
        def select() -> set[str]:
            found: set[str] = set()
            for start in range(0, len(job_ids), 500):
                batch = job_ids[start:start + 500]
                marks = ",".join("?" * len(batch))
                rows = self._connection().execute(
                    f"SELECT job_id FROM jobs WHERE job_id IN ({marks})", batch).fetchall()
                found.update(row[0] for row in rows)
            return found

        return await self._calls.run(select)

    async def unfinished_among(self, job_ids: list[str]) -> list[JobRecord]:
        """The QUEUED and RUNNING records among ``job_ids`` (unreadable ones left out)."""
        unfinished = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)

        def select() -> list[tuple[str, str]]:
            rows: list[tuple[str, str]] = []
            for start in range(0, len(job_ids), 500):
                batch = job_ids[start:start + 500]
                marks = ",".join("?" * len(batch))
                rows += self._connection().execute(
                    f"SELECT job_id, record FROM jobs WHERE job_id IN ({marks}) "
                    "AND status IN (?, ?)", [*batch, *unfinished]).fetchall()
            return rows

        found = []
        for job_id, text in await self._calls.run(select):
            try:
                found.append(self._record(job_id, text))
            except RecordUnreadable:
                continue  # reported; the others are served
        return found

    async def newest_submission(self) -> datetime | None:
        """When the newest job the database names was submitted (None: it names none)."""
        def select() -> str | None:
            row = self._connection().execute("SELECT max(submitted_at) FROM jobs").fetchone()
            return row[0] if row else None

        text = await self._calls.run(select)
        return datetime.fromisoformat(text) if text else None

    async def delete_finished_before(self, cutoff: datetime) -> list[str]:
        """Remove the records of jobs that reached a final status before ``cutoff``."""
        finals = [status.value for status in JobStatus if status.is_final]
        marks = ",".join("?" * len(finals))
        before = cutoff.astimezone(UTC).isoformat(timespec="microseconds")

        def delete(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                f"SELECT job_id FROM jobs WHERE status IN ({marks}) "
                "AND json_extract(record, '$.finished_at') < ?", [*finals, before]).fetchall()
            ids = [(row[0],) for row in rows]
            conn.executemany("DELETE FROM jobs WHERE job_id = ?", ids)
            conn.executemany("DELETE FROM inputs WHERE job_id = ?", ids)
            return [job_id for job_id, in ids]

        deleted = await self._write(delete)
        assert isinstance(deleted, list)
        return deleted

    async def read_document(self, name: str) -> Document | None:
        def select() -> tuple[int, bytes] | None:
            row = self._connection().execute(
                "SELECT version, body FROM documents WHERE name = ?", (name,)).fetchone()
            return (int(row[0]), bytes(row[1])) if row else None

        found = await self._calls.run(select)
        return Document(found[1], found[0]) if found else None

    async def write_document(self, name: str, body: bytes, version: int,
                             fence: Fence | None = None) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            if version == 0:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO documents VALUES (?, 1, ?)", (name, body))
            else:
                cursor = conn.execute(
                    "UPDATE documents SET version = version + 1, body = ? "
                    "WHERE name = ? AND version = ?", (body, name, version))
            return cursor.rowcount == 1

        return bool(await self._write(write))

    async def close(self) -> None:
        if self._calls.closed:
            return

        def close_connection() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        def close_listing_connection() -> None:
            if self._listing_conn is not None:
                self._listing_conn.close()
                self._listing_conn = None

        await self._listing_calls.run(close_listing_connection)
        self._listing_calls.close()
        await self._calls.run(close_connection)
        self._calls.close()

    @staticmethod
    def _row(record: JobRecord) -> tuple[str, str, str, str | None, str, str]:
        return (
            record.job_id,
            record.status.value,
            record.owner_fingerprint,
            record.idempotency_key or None,
            _sortable(record.submitted_at),
            json.dumps(codec.encode(record)),
        )


def _lean_of(job_id: str, values: list[Any]) -> QueuedRow | None:
    """A plain-shaped record's values (_QUEUED_PAGE) as codec.decode_lean would give
    them, or None when it would not give a QueuedRow (or would raise): read whole then."""
    (record_id, backend, owner_name, owner_fingerprint, role, sdk_version, save_job, settings,
     timeout_ms, input_size_bytes, queued_at, submitted_at, format_version, raw_size,
     encoded_size) = values
    required = (backend, owner_name, owner_fingerprint, role, settings, timeout_ms,
                input_size_bytes, queued_at)
    try:
        if (record_id != job_id or None in required or submitted_at != queued_at
                or int(1 if format_version is None else format_version) != RECORD_FORMAT
                or int(0 if raw_size is None else raw_size) != 0
                or int(0 if encoded_size is None else encoded_size) != 0):
            return None
        return codec.queued_row(job_id, backend, owner_name, owner_fingerprint, role,
                                "" if sdk_version is None else sdk_version,
                                False if save_job is None else save_job, settings,
                                timeout_ms, input_size_bytes, queued_at)
    except (ValueError, TypeError, ArithmeticError):
        return None  # the whole decode refuses it too, and reports it


def _sortable(moment: datetime) -> str:
    """A time as the submitted_at column holds it: UTC ISO text, which sorts as time."""
    return moment.astimezone(UTC).isoformat()

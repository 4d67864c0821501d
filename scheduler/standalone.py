"""Standalone mode: every store under one data directory, nothing else installed.

<data-dir>/jobs.sqlite3      job records and their programs (one transaction per submission)
<data-dir>/tokens.sqlite3    the embedded token database (fingerprints only)
<data-dir>/payloads/         results (and the programs of an older data directory)
<data-dir>/url-signing.key   the HMAC key of upload and download URLs (mode 0600)
<data-dir>/backends.toml     backend status, written with defaults, reloaded on change
<data-dir>/scheduler.lock    held by the running scheduler: one per data directory
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from backend_manager.sources import FileBackendSource
from common.clock import Clock
from job_manager.stores.local_payload_store import SqliteInputsPayloadStore
from job_manager.stores.sqlite_job_store import SqliteJobStore
from job_manager.stores.unreadable import UnreadableRecords
from job_manager.stores.url_signer import UrlSigner
from leadership.lock import DataDirectoryLock, DataDirectoryLocked
from scheduler.config import ConfigError
from scheduler.housekeeping import Housekeeping, Retention
from scheduler.stack import Stack
from token_database.credential import load_or_create_secret
from token_database.store import SqliteTokenStore


def token_store_path(data_dir: Path) -> Path:
    """Where the embedded token database keeps its file."""
    return data_dir / "tokens.sqlite3"


def token_secret_path(data_dir: Path) -> Path:
    """The embedded token database's admin credential (token_database/credential.py)."""
    return data_dir / "token-database.secret"


def keep_private(data_dir: Path) -> None:
    """The directory 0700 and everything in it 0600 (0700 for folders): names, fingerprints,
    job metadata, the signing key and the token database's credential are the owner's."""
    data_dir.chmod(0o700)
    for path in data_dir.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod(0o700 if path.is_dir() else 0o600)


async def standalone_stack(data_dir: Path, clock: Clock, key_window: timedelta,
                           unreadable: UnreadableRecords, retention: Retention) -> Stack:
    """Open (creating on first use) the data directory's stores, readable by its owner only."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirectoryLock(data_dir)
    try:
        lock.acquire()
    except DataDirectoryLocked as exc:
        raise ConfigError(f"--data-dir: {exc}") from None
    try:
        jobs = SqliteJobStore(data_dir / "jobs.sqlite3", key_window=key_window,
                              unreadable=unreadable)
        await jobs.open()
        token_store = SqliteTokenStore(token_store_path(data_dir))
        payloads = SqliteInputsPayloadStore(
            data_dir / "payloads",
            UrlSigner.from_key_file(data_dir / "url-signing.key"),
            base_url="http://127.0.0.1",  # replaced once the HTTP port is bound
            clock=clock,
            jobs=jobs,
        )
        keep_private(data_dir)
        housekeeping = Housekeeping(data_dir, jobs, payloads, clock, retention)
        await housekeeping.fail_already_run()  # before the manager recovers the queue
    except BaseException:
        lock.release()  # a start that fails half-way leaves the directory free
        raise
    return Stack(
        jobs=jobs,
        payloads=payloads,
        backend_source=FileBackendSource(data_dir / "backends.toml"),
        local_payloads=payloads,
        token_store=token_store,
        token_database_secret=load_or_create_secret(token_secret_path(data_dir)),
        housekeeping=housekeeping,
        lock=lock,
    )

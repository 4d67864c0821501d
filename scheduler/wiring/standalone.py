"""Standalone mode: every store under one data directory, nothing else installed.

<data-dir>/jobs.sqlite3      job records and their programs (one transaction per submission)
<data-dir>/tokens.sqlite3    the embedded token database (fingerprints only)
<data-dir>/payloads/         results (and the programs of an older data directory)
<data-dir>/url-signing.key   the HMAC key of upload and download URLs (mode 0600)
<data-dir>/backends.toml     backend status, written with defaults, reloaded on change
<data-dir>/scheduler.lock    held by the running scheduler: one per data directory
<data-dir>/node.secret       the nodes' credential on the execution port (mode 0600)

Other local accounts are strangers: the directory and everything in it must be this
account's own and writable by no one else, and no path in it may be a symbolic link
(common/private_files.py); a start that finds otherwise stops, naming the path.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from backend_manager.sources import FileBackendSource
from common import private_files
from common.clock import Clock
from job_manager.stores.local_payload_store import SqliteInputsPayloadStore
from job_manager.stores.sqlite_job_store import SqliteJobStore
from job_manager.stores.unreadable import UnreadableRecords
from job_manager.stores.url_signer import UrlSigner
from leadership.lock import LOCK_FILE, DataDirectoryLock, DataDirectoryLocked
from scheduler.operations.housekeeping import Housekeeping, Retention
from scheduler.wiring.config import ConfigError
from scheduler.wiring.stack import Stack
from token_database.credential import load_or_create_secret
from token_database.store import SqliteTokenStore

JOBS, TOKENS, PAYLOADS, BACKENDS = "jobs.sqlite3", "tokens.sqlite3", "payloads", "backends.toml"
URL_KEY, TOKEN_DATABASE_SECRET, NODE_SECRET = (
    "url-signing.key", "token-database.secret", "node.secret")
SECRETS = (URL_KEY, TOKEN_DATABASE_SECRET, NODE_SECRET)  # unreadable by others, too
FILES = (BACKENDS, LOCK_FILE)
DATABASES = (JOBS, TOKENS)  # with their SQLite side files


def token_store_path(data_dir: Path) -> Path:
    """Where the embedded token database keeps its file."""
    return data_dir / TOKENS


def token_secret_path(data_dir: Path) -> Path:
    """The embedded token database's admin credential (token_database/credential.py)."""
    return data_dir / TOKEN_DATABASE_SECRET


def node_secret_path(data_dir: Path) -> Path:
    """The nodes' credential: whoever may read it may take users' programs (docs/nodes.md)."""
    return data_dir / NODE_SECRET


def open_data_directory(data_dir: Path) -> None:
    """Make the data directory (0700) or check that it and every file the scheduler keeps
    there are this account's alone: the first command, a server's start or ``tokens
    create``, applies the same rules, before it makes or opens anything in it."""
    private_files.private_directory(data_dir, own_link_allowed=True)
    for name in SECRETS:
        private_files.check_file(data_dir / name, secret=True)
    for name in FILES:
        private_files.check_file(data_dir / name)
    for name in DATABASES:
        for suffix in ("", *private_files.SQLITE_SIDE_FILES):
            private_files.check_file(data_dir / f"{name}{suffix}")
    private_files.check_file(data_dir / PAYLOADS, directory=True)


def keep_private(data_dir: Path) -> None:
    """The directory 0700 and everything in it 0600 (0700 for folders): names, fingerprints,
    job metadata, the signing key and the token database's credential are the owner's."""
    data_dir.chmod(0o700)
    for path in data_dir.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod(0o700 if path.is_dir() else 0o600)


async def standalone_stack(data_dir: Path, clock: Clock, key_window: timedelta,
                           unreadable: UnreadableRecords, retention: Retention,
                           node_secret: bool = True) -> Stack:
    """Open (creating on first use) the data directory's stores, readable by its owner only.

    ``node_secret``: nodes must present ``node.secret`` (made on first use), for want of
    another credential the operator chose (scheduler/wiring/config.py)."""
    open_data_directory(data_dir)
    lock = DataDirectoryLock(data_dir)
    try:
        lock.acquire()
    except DataDirectoryLocked as exc:
        raise ConfigError(f"--data-dir: {exc}") from None
    try:
        jobs = SqliteJobStore(data_dir / JOBS, key_window=key_window,
                              unreadable=unreadable)
        await jobs.open()
        token_store = SqliteTokenStore(token_store_path(data_dir))
        payloads = SqliteInputsPayloadStore(
            data_dir / PAYLOADS,
            UrlSigner.from_key_file(data_dir / URL_KEY),
            base_url="http://127.0.0.1",  # replaced once the HTTP port is bound
            clock=clock,
            jobs=jobs,
        )
        secrets = _secrets(data_dir, node_secret)  # checked before keep_private's chmod
        keep_private(data_dir)
        housekeeping = Housekeeping(data_dir, jobs, payloads, clock, retention)
        await housekeeping.fail_already_run()  # before the manager recovers the queue
    except BaseException:
        lock.release()  # a start that fails half-way leaves the directory free
        raise
    return Stack(
        jobs=jobs,
        payloads=payloads,
        backend_source=FileBackendSource(data_dir / BACKENDS),
        local_payloads=payloads,
        token_store=token_store,
        execution_secret=secrets[1],
        token_database_secret=secrets[0],
        housekeeping=housekeeping,
        lock=lock,
    )


def _secrets(data_dir: Path, node_secret: bool) -> tuple[str, str | None]:
    """The token database's credential, and the nodes' when they are to present one."""
    nodes = load_or_create_secret(node_secret_path(data_dir)) if node_secret else None
    return load_or_create_secret(token_secret_path(data_dir)), nodes

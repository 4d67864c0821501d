"""The stores and sources one mode runs on, built by ``standalone.py`` or ``aws.py``."""

from __future__ import annotations

from dataclasses import dataclass, field

from backend_manager.sources import BackendSource
from job_manager.stores import JobStore, PayloadStore
from job_manager.stores.local_payload_store import LocalPayloadStore
from leadership.lease import LeaseTable
from leadership.lock import DataDirectoryLock
from scheduler.operations.housekeeping import Housekeeping
from token_database.store import SqliteTokenStore


@dataclass
class Stack:
    """Everything mode-specific the scheduler is wired to."""

    jobs: JobStore
    payloads: PayloadStore
    backend_source: BackendSource
    local_payloads: LocalPayloadStore | None = None  # served by the HTTP endpoint
    token_store: SqliteTokenStore | None = None  # the embedded token database
    # The nodes' shared secret, when read from SSM; the embedded token database's credential.
    execution_secret: str | None = field(default=None, repr=False)
    token_database_secret: str | None = field(default=None, repr=False)
    housekeeping: Housekeeping | None = None  # standalone: sweeps and measures the data dir
    lock: DataDirectoryLock | None = None  # standalone: this process's hold on the data dir
    lease_table: LeaseTable | None = None  # AWS: where the replicas' lease lives

    async def close(self) -> None:
        """Close every store; idempotent."""
        await self.jobs.close()
        await self.payloads.close()
        if self.token_store is not None:
            self.token_store.close()
            self.token_store = None
        if self.lock is not None:
            self.lock.release()  # last: the stores above are closed

"""A real SQLite job store in a test's own folder, for the unit tests of the scheduler's
own documents (bookings, sessions, budgets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from job_manager.stores.sqlite_job_store import SqliteJobStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    opened = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield opened
    await opened.close()

"""Token records and where they are kept."""

from __future__ import annotations

import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from common import private_files
from common.identity import fingerprint

TOKEN_PREFIX = "mqc3_"
FINGERPRINT_PREFIX = "sha256:"  # how listings name a token they cannot show


def new_token() -> str:
    """A fresh token: 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_key(token_or_reference: str) -> str:
    """The fingerprint a raw token or a ``sha256:<fingerprint>`` reference names."""
    if token_or_reference.startswith(FINGERPRINT_PREFIX):
        return token_or_reference[len(FINGERPRINT_PREFIX) :]
    return fingerprint(token_or_reference)


@dataclass(frozen=True)
class TokenRecord:
    """A token as stored: its fingerprint, never the token."""

    fingerprint: str
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None = None  # None: never expires


class TokenStore(Protocol):
    """Token records by fingerprint (blocking calls)."""

    def put(self, record: TokenRecord) -> None:
        """Add or replace a record."""
        ...

    def get(self, key: str) -> TokenRecord | None:
        """The record with this fingerprint, or None."""
        ...

    def delete(self, key: str) -> bool:
        """Remove a record; False when there was none."""
        ...

    def list(self) -> list[TokenRecord]:
        """Every record, oldest first."""
        ...


class SqliteTokenStore:
    """Token records in a SQLite file, safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        private_files.private_file(path)  # 0600, ours, no link: before SQLite opens it
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS tokens (fingerprint TEXT PRIMARY KEY,"
                " name TEXT NOT NULL, role TEXT NOT NULL, created_at TEXT NOT NULL,"
                " expires_at TEXT)"
            )

    def put(self, record: TokenRecord) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?, ?)",
                (
                    record.fingerprint,
                    record.name,
                    record.role,
                    record.created_at.isoformat(),
                    record.expires_at.isoformat() if record.expires_at else None,
                ),
            )

    def get(self, key: str) -> TokenRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM tokens WHERE fingerprint = ?", (key,)
            ).fetchone()
        return self._record(row) if row else None

    def delete(self, key: str) -> bool:
        with self._lock:
            return (
                self._conn.execute("DELETE FROM tokens WHERE fingerprint = ?", (key,)).rowcount == 1
            )

    def list(self) -> list[TokenRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM tokens ORDER BY created_at").fetchall()
        return [self._record(row) for row in rows]

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._conn.close()

    @staticmethod
    def _record(row: tuple[str, str, str, str, str | None]) -> TokenRecord:
        key, name, role, created_at, expires_at = row
        return TokenRecord(
            key,
            name,
            role,
            datetime.fromisoformat(created_at),
            datetime.fromisoformat(expires_at) if expires_at else None,
        )

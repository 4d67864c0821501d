"""The audit stream: administrative and cross-user actions, one JSON object per line.

Kept apart from the service's log (docs/audit.md): its own logger, which passes nothing
to the root logger, so neither the log level nor the repeat limit of common/logs.py
ever drops an entry. Entries name people by name and token fingerprint, never a token.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from common.identity import Principal
from common.logs import current_request_id

LOGGER_NAME = "mqc3.audit"
DESTINATION_VARIABLE = "SCHEDULER_AUDIT_LOG"  # a file to append to; unset: stderr
_audit = logging.getLogger(LOGGER_NAME)
_audit.propagate = False  # the service's log settings and filters never touch an entry
_audit.setLevel(logging.INFO)

OK = "ok"
REFUSED = "refused"


@dataclass(frozen=True)
class Actor:
    """Who did it: a token's holder, or an operator (a credential or a local account)."""

    name: str
    role: str
    fingerprint: str = ""  # the token's SHA-256; "" for an operator
    address: str = ""  # where the call came from, when known

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        """The holder of an authenticated token."""
        return cls(principal.name, principal.role.value, principal.fingerprint)

    @classmethod
    def local_account(cls) -> Actor:
        """The account on this machine that runs an operator's command line."""
        try:
            name = getpass.getuser()
        except (OSError, KeyError):
            name = f"uid {os.getuid()}"
        return cls(name, "operator", address="local")


class OwnedJob(Protocol):
    """A job as the audit names it."""

    @property
    def job_id(self) -> str: ...
    @property
    def owner_name(self) -> str: ...
    @property
    def owner_fingerprint(self) -> str: ...


class _AuditFormatter(logging.Formatter):
    """The entry as one JSON object, its UTC time first."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record)}
        entry.update(getattr(record, "audit", {}))
        return json.dumps(entry, ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when an entry comes (tests replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        super().emit(record)


def configure_audit(path: Path | None) -> None:
    """Send the audit stream to ``path`` (appended to, made owner-readable only) or, with
    None, to stderr. OSError when the file cannot be opened."""
    handler: logging.Handler
    if path is None:
        handler = _Stderr()
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_AuditFormatter())
    for old in list(_audit.handlers):
        _audit.removeHandler(old)
        old.close()
    _audit.addHandler(handler)


def record(actor: Actor, action: str, *, result: str = OK, code: str = "",
           **target: str | int) -> None:
    """Write one entry: who (``actor``), what (``action``), on what (``target``: job_id,
    owner, token_fingerprint, ...), how it ended (``result``, ``code`` when refused), and
    the request id of the call it happened in, when there is one (common/logs.py)."""
    if not _audit.handlers:
        configure_audit(None)  # never lost for want of set-up: stderr
    entry: dict[str, str | int] = {
        "actor_name": actor.name,
        "actor_fingerprint": actor.fingerprint,
        "actor_role": actor.role,
        "action": action,
        **target,
        "result": result,
    }
    if code:
        entry["code"] = code
    if actor.address:
        entry["address"] = actor.address
    call_id = current_request_id()
    if call_id:
        entry["request_id"] = call_id
    _audit.info(action, extra={"audit": entry})


def cross_user(principal: Principal, action: str, job: OwnedJob, code: str = "") -> None:
    """Audit ``action`` on ``job`` when ``principal`` (an admin) does not own it; ``code``:
    why it was refused. An owner's actions on their own jobs are not audited (volume)."""
    if job.owner_fingerprint == principal.fingerprint:
        return
    record(Actor.of(principal), action, result=REFUSED if code else OK, code=code,
           job_id=job.job_id, owner_name=job.owner_name,
           owner_fingerprint=job.owner_fingerprint)

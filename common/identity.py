"""Who is calling: roles, the caller, and the fingerprint that stands for a token."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Role(StrEnum):
    """What a token may do; it comes from the token, never from a request."""

    ADMIN = "admin"  # sees every job, largest limits
    DEVELOPER = "developer"
    GUEST = "guest"


def fingerprint(token: str) -> str:
    """The SHA-256 of a token, hex: what is stored and compared instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def user_label(name: str, token_fingerprint: str) -> str:
    """A user as logs name them: name and the first 8 hex of the token's fingerprint."""
    return f"{name}#{token_fingerprint[:8]}"


class Owned(Protocol):
    """Anything that belongs to a token (a job)."""

    @property
    def owner_fingerprint(self) -> str: ...


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role
    fingerprint: str

    @property
    def log_name(self) -> str:
        """How logs name the caller: the name and a short fingerprint, never the token."""
        return user_label(self.name, self.fingerprint)

    def may_see(self, owned: Owned) -> bool:
        """Owners see their own things; admins see everything."""
        return self.role is Role.ADMIN or owned.owner_fingerprint == self.fingerprint

"""The backend status table and the TOML text it is read from.

[backends.<backend>.<role>]
status = "available" | "unavailable" | "maintenance"
description = "shown to users"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Mapping

from common.identity import Role


class BackendConfigError(ValueError):
    """The backend status text cannot be used; the message says where."""


class ServiceStatus(StrEnum):
    """Whether a backend takes jobs from a role."""

    AVAILABLE = "available"  # takes jobs
    UNAVAILABLE = "unavailable"  # does not take jobs (down, or not offered to this role)
    MAINTENANCE = "maintenance"  # does not take jobs for now, on purpose


@dataclass(frozen=True)
class RoleStatus:
    """A backend's status for one role, with the description users see."""

    status: ServiceStatus
    description: str = ""


@dataclass(frozen=True)
class BackendTable:
    """Every known backend and its status for each role."""

    backends: Mapping[str, Mapping[Role, RoleStatus]] = field(default_factory=dict)

    def known(self) -> list[str]:
        """The backend names, sorted."""
        return sorted(self.backends)

    def is_known(self, backend: str) -> bool:
        """True when the backend is in the table."""
        return backend in self.backends

    def status(self, backend: str, role: Role) -> RoleStatus:
        """The backend's status for ``role``; a role the table leaves out is unavailable."""
        by_role = self.backends.get(backend, {})
        return by_role.get(role) or RoleStatus(
            ServiceStatus.UNAVAILABLE, f"{backend} is not offered to {role.value} tokens"
        )


def parse_backend_table(text: str) -> BackendTable:
    """Read the TOML text; raise BackendConfigError naming the first problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BackendConfigError(f"backend status is not valid TOML: {exc}") from None
    backends = raw.get("backends")
    if not isinstance(backends, dict) or not backends:
        raise BackendConfigError("backend status has no [backends.<name>.<role>] tables")
    table: dict[str, dict[Role, RoleStatus]] = {}
    for backend, roles in backends.items():
        if not isinstance(roles, dict):
            raise BackendConfigError(f"backends.{backend} must be a table of roles")
        table[backend] = {}
        for role_name, entry in roles.items():
            where = f"backends.{backend}.{role_name}"
            try:
                role = Role(role_name)
            except ValueError:
                raise BackendConfigError(
                    f"{where}: role must be one of {[r.value for r in Role]}"
                ) from None
            if not isinstance(entry, dict):
                raise BackendConfigError(f"{where} must be a table with status and description")
            try:
                status = ServiceStatus(str(entry.get("status")))
            except ValueError:
                raise BackendConfigError(
                    f"{where}.status must be one of {[s.value for s in ServiceStatus]}"
                ) from None
            description = entry.get("description", "")
            if not isinstance(description, str):
                raise BackendConfigError(f"{where}.description must be a string")
            table[backend][role] = RoleStatus(status, description)
    return BackendTable(table)


# The table a new standalone data directory starts with, and what deploy/compose.yaml's
# LocalStack holds: one file, beside this module, so that it ships with the package.
DEFAULT_BACKENDS_TOML = (resources.files("backend_manager") / "default_backends.toml").read_text(
    encoding="utf-8")

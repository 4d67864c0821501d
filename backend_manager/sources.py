"""Where the backend status text comes from: an SSM parameter, or a file in the data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from backend_manager.status import DEFAULT_BACKENDS_TOML


class BackendSource(Protocol):
    """Reads the current backend status text (a blocking call)."""

    description: str

    def read(self) -> str:
        """The TOML text as it is now."""
        ...


class SsmBackendSource:
    """The TOML text in an SSM parameter."""

    def __init__(self, client: Any, parameter_name: str) -> None:
        self._client = client
        self._name = parameter_name
        self.description = f"SSM parameter {parameter_name}"

    def read(self) -> str:
        answer = self._client.get_parameter(Name=self._name, WithDecryption=True)
        return str(answer["Parameter"]["Value"])


class FileBackendSource:
    """The TOML text in a file, written with defaults if it does not exist yet."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.description = f"file {path.name}"

    def read(self) -> str:
        if not self._path.exists():
            self._path.write_text(DEFAULT_BACKENDS_TOML)
        return self._path.read_text()

"""Where the backend status text comes from: an SSM parameter, or a file in the data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from backend_manager.status import DEFAULT_BACKENDS_TOML
from common import private_files


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
    """The TOML text in a file, written with defaults (0600) if it does not exist yet; a
    link, or a file another account owns or may write, is refused (common/private_files.py)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self.description = f"file {path.name}"

    def read(self) -> str:
        private_files.create_file(self._path, DEFAULT_BACKENDS_TOML.encode())
        text = private_files.read_file(self._path)
        if text is None:
            raise FileNotFoundError(f"{self._path} was removed as it was read")
        return text.decode()

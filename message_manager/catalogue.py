"""The error catalogue: every user-visible error code and message, from one TOML file."""

from __future__ import annotations

import functools
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

# The names of gRPC status codes an in-band error may carry (docs/protocol.md).
ALLOWED_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "UNAUTHENTICATED",
        "NOT_FOUND",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "INTERNAL",
        "UNAVAILABLE",
    }
)

CATALOGUE_PATH = Path(__file__).with_name("messages.toml")


@dataclass(frozen=True)
class Entry:
    """One catalogue entry: a status code name and a message template."""

    key: str
    code: str
    template: str

    @property
    def fields(self) -> frozenset[str]:
        """The placeholder names the template uses."""
        return frozenset(name for _, name, _, _ in string.Formatter().parse(self.template) if name)

    def render(self, params: Mapping[str, object]) -> str:
        """The message with its placeholders filled in."""
        missing = self.fields - params.keys()
        if missing:
            raise KeyError(f"message {self.key!r} needs {sorted(missing)}")
        return self.template.format(**params)


class Catalogue:
    """Catalogue entries by key, checked when loaded."""

    def __init__(self, entries: Mapping[str, Entry]) -> None:
        self._entries = dict(entries)

    @classmethod
    def load(cls, path: Path = CATALOGUE_PATH) -> Catalogue:
        """Read and check the catalogue file."""
        with path.open("rb") as f:
            raw = tomllib.load(f)
        entries: dict[str, Entry] = {}
        for key, value in raw.items():
            code, template = value.get("code"), value.get("message")
            if code not in ALLOWED_CODES or not isinstance(template, str):
                raise ValueError(f"catalogue entry {key!r} needs a known code and a message")
            entries[key] = Entry(key=key, code=code, template=template)
        return cls(entries)

    def entry(self, key: str) -> Entry:
        """The entry for ``key``; KeyError when the catalogue has none."""
        return self._entries[key]

    def keys(self) -> frozenset[str]:
        """Every key in the catalogue."""
        return frozenset(self._entries)


@functools.cache
def default_catalogue() -> Catalogue:
    """The catalogue shipped with the service, loaded once."""
    return Catalogue.load()

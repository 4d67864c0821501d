"""BackendManager: the current backend table, reloaded periodically without a restart."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from backend_manager.sources import BackendSource
from backend_manager.status import BackendConfigError, BackendTable, parse_backend_table

log = logging.getLogger(__name__)


class BackendManager:
    """Holds the last good table; a bad or unreachable source keeps it and says so."""

    def __init__(self, source: BackendSource, reload_interval_s: float) -> None:
        self._source = source
        self._reload_interval_s = reload_interval_s
        self._text = ""
        self.table = BackendTable()
        self._listeners: list[Callable[[BackendTable], None]] = []

    def on_change(self, listener: Callable[[BackendTable], None]) -> None:
        """Call ``listener`` with each new table."""
        self._listeners.append(listener)

    async def load(self) -> None:
        """Read and apply the source now; raises when it cannot be read or parsed."""
        text = await asyncio.to_thread(self._source.read)
        if text == self._text:
            return
        try:
            table = parse_backend_table(text)
        except BackendConfigError as exc:
            raise BackendConfigError(f"{self._source.description}: {exc}") from None
        self._text, self.table = text, table
        log.info(
            "backend status loaded from %s: %s", self._source.description, ", ".join(table.known())
        )
        for listener in self._listeners:
            listener(table)

    async def reload_forever(self) -> None:
        """Reload every interval (the scheduler's supervisor runs this, and restarts it)."""
        while True:
            await asyncio.sleep(self._reload_interval_s)
            try:
                await self.load()
            except BackendConfigError as exc:
                log.warning("backend status not reloaded, keeping the last good one: %s", exc)
            except Exception as exc:  # noqa: BLE001 - any source failure must not stop reloading
                log.warning(
                    "backend status could not be read from %s: %s", self._source.description, exc
                )

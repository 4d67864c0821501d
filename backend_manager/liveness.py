"""Whether each backend still has a node asking for work (docs/nodes.md).

A backend's configured status says whether it takes jobs; only its nodes' calls say
whether anything is there to run them. A node is present while it asks for work
(AssignNextJob) and while it waits in a long poll; a backend none has asked for longer
than the setting is quiet: one WARNING when it goes quiet, one INFO when a node returns,
and a note in what GetServiceStatus describes. Memory only, on the monotonic clock; each
term of the leader starts afresh (nothing seen before it began).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

from common.clock import Clock, spoken_duration

log = logging.getLogger(__name__)


class NodeLiveness:
    """When each backend last had a node asking for work."""

    def __init__(self, clock: Clock, quiet_after_s: float,
                 is_known: Callable[[str], bool] = lambda backend: True) -> None:
        self._clock = clock
        self._quiet_after_s = quiet_after_s
        # A name no backend has is not remembered (with one shared queue, a node may ask
        # under any name), so made-up names cannot grow this memory.
        self._is_known = is_known
        self._since_s = clock.monotonic()  # no node is known to have asked before this
        self._last_s: dict[str, float] = {}  # backend → when a node last asked
        self._waiting: dict[str, int] = {}  # backend → nodes in a long poll now
        self._quiet: set[str] = set()  # backends whose WARNING was logged

    def polled(self, backend: str) -> None:
        """A node asked ``backend`` for work just now."""
        if not self._is_known(backend):
            return
        self._last_s[backend] = self._clock.monotonic()
        if backend in self._quiet:
            self._quiet.discard(backend)
            log.info("backend %s: a node asks for work again", backend)

    @contextlib.contextmanager
    def waiting(self, backend: str) -> Iterator[None]:
        """A node waits for ``backend``'s next job (a long poll): present all along."""
        if not self._is_known(backend):
            yield
            return
        self.polled(backend)
        self._waiting[backend] = self._waiting.get(backend, 0) + 1
        try:
            yield
        finally:
            self._waiting[backend] -= 1
            self.polled(backend)

    def quiet_s(self, backend: str) -> float:
        """Seconds since a node last asked ``backend`` for work; 0 while one waits."""
        if self._waiting.get(backend, 0) > 0:
            return 0.0
        return self._clock.monotonic() - self._last_s.get(backend, self._since_s)

    def note(self, backend: str) -> str:
        """What a service status adds for a quiet backend; "" while nodes ask."""
        quiet_s = self.quiet_s(backend)
        if quiet_s <= self._quiet_after_s:
            return ""
        return f"no node has asked for work for {spoken_duration(quiet_s)}"

    def check(self, backends: Iterable[str]) -> None:
        """Log once for each of ``backends`` that has just gone quiet."""
        for backend in backends:
            if backend not in self._quiet and self.note(backend):
                self._quiet.add(backend)
                log.warning("backend %s: %s (SCHEDULER_NODE_QUIET_S is %g s)", backend,
                            self.note(backend), self._quiet_after_s)

    def snapshot(self, backends: Iterable[str]) -> list[tuple[str, float]]:
        """(backend, seconds since a node asked) for each of ``backends``, for metrics."""
        return [(backend, self.quiet_s(backend)) for backend in backends]

"""Records a store could not read: each logged once with what is wrong, and counted."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger(__name__)

REMEMBERED = 10_000  # job ids whose problem was logged, so a record is not logged again


class UnreadableRecords:
    """Told by a store about each record it skipped or could not serve; never raises."""

    def __init__(self, on_first_sight: Callable[[], None] = lambda: None) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._on_first_sight = on_first_sight

    def saw(self, job_id: str, why: str) -> None:
        """Record that ``job_id``'s record cannot be read, and why."""
        if job_id in self._seen:
            return
        self._seen[job_id] = None
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        self._on_first_sight()
        log.error("job %s: its record cannot be read and is left untouched (%s); "
                  "every other job is served", job_id[:64], why)

    def __len__(self) -> int:
        return len(self._seen)

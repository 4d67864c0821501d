"""What the JobManager tells the outside about jobs (metrics hook in here)."""

from __future__ import annotations

from typing import Protocol

from job_manager.model import JobRecord

# The backend a refused submission is counted under when it names none the scheduler knows:
# a client's made-up name must not become a metric label.
UNKNOWN_BACKEND = "unknown"


class JobObserver(Protocol):
    """Notified on each job event; must not block or raise."""

    def submitted(self, record: JobRecord) -> None:
        """A job was accepted and queued."""
        ...

    def refused(self, backend: str, role: str, code: str) -> None:
        """A submission was refused with ``code``."""
        ...

    def handed_over(self, record: JobRecord) -> None:
        """A job was handed to a node."""
        ...

    def given_back(self, record: JobRecord) -> None:
        """A job handed to a node that never received it went back to its queue."""
        ...

    def requeued(self, record: JobRecord) -> None:
        """A job whose node vanished (no report in time) was queued again."""
        ...

    def finished(self, record: JobRecord) -> None:
        """A job reached a final status."""
        ...

    def timestamps_clamped(self, record: JobRecord, count: int) -> None:
        """A node's report carried ``count`` timestamps outside the job's run, clamped."""
        ...


class NoObserver:
    """Observes nothing."""

    def submitted(self, record: JobRecord) -> None:
        pass

    def refused(self, backend: str, role: str, code: str) -> None:
        pass

    def handed_over(self, record: JobRecord) -> None:
        pass

    def given_back(self, record: JobRecord) -> None:
        pass

    def requeued(self, record: JobRecord) -> None:
        pass

    def finished(self, record: JobRecord) -> None:
        pass

    def timestamps_clamped(self, record: JobRecord, count: int) -> None:
        pass

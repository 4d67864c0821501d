"""A backend's recent hand-over rate, for the wait estimates users are shown."""

from __future__ import annotations

from collections import deque


class DispatchRate:
    """The mean gap between a queue's last few hand-overs (monotonic seconds)."""

    def __init__(self, window: int = 50) -> None:
        self._times: deque[float] = deque(maxlen=window)

    def record(self, at_s: float) -> None:
        """A job was handed over at ``at_s``."""
        self._times.append(at_s)

    def seconds_per_job(self) -> float | None:
        """The mean gap, or None before two hand-overs."""
        if len(self._times) < 2:
            return None
        return (self._times[-1] - self._times[0]) / (len(self._times) - 1)

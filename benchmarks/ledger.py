"""Every job the load generator submitted, and what became of it: none lost, none doubled."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass
class JobEntry:
    """One accepted job as the load generator saw it."""

    program: bytes  # the payload sent; the node must receive exactly these bytes
    token_index: int  # which token owns it (status calls must use the owner's token)
    backend: str
    phase: str
    acknowledged_at_s: float  # perf_counter when the submitter got its job id
    assignments: int = 0
    received_at_s: float | None = None  # perf_counter when a node first received it
    reported: bool = False


class Ledger:
    """Counts accepted, assigned once, assigned more than once and never assigned jobs."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobEntry] = {}
        self.ambiguous_submits = 0  # transport errors: the job may or may not exist
        self.unknown_assigned: list[str] = []  # handed to a node, never acknowledged to us
        self.mismatched: list[str] = []  # the node received other bytes than were sent
        self.report_refusals: Counter[str] = Counter()
        self.duplicate_ids: list[str] = []
        # Received by a node before its submitter had the answer (a long-polling node
        # can be that quick): applied when the submission is acknowledged.
        self._early: dict[str, list[tuple[bytes, float]]] = {}

    def accepted(self, job_id: str, entry: JobEntry) -> None:
        if job_id in self.jobs:
            self.duplicate_ids.append(job_id)  # two submissions answered with one id
            return
        self.jobs[job_id] = entry
        for program, at_s in self._early.pop(job_id, []):
            self._received(entry, job_id, program, at_s)

    def assigned(self, job_id: str, program: bytes, at_s: float) -> JobEntry | None:
        """A node received ``job_id``; returns its entry (None while we have not seen it
        acknowledged: then it counts once it is, or as unknown in the end)."""
        entry = self.jobs.get(job_id)
        if entry is None:
            self._early.setdefault(job_id, []).append((program, at_s))
            return None
        self._received(entry, job_id, program, at_s)
        return entry

    def _received(self, entry: JobEntry, job_id: str, program: bytes, at_s: float) -> None:
        entry.assignments += 1
        if entry.received_at_s is None:
            entry.received_at_s = at_s
        if program != entry.program:
            self.mismatched.append(job_id)

    def reported(self, job_id: str) -> None:
        entry = self.jobs.get(job_id)
        if entry is not None:
            entry.reported = True

    def of_phase(self, phase: str) -> list[tuple[str, JobEntry]]:
        return [(job_id, e) for job_id, e in self.jobs.items() if e.phase == phase]

    def accounting(self) -> dict[str, Any]:
        """The verdict: ``ok`` is False when any job was lost, doubled or mixed up."""
        self.unknown_assigned = sorted(self._early)
        counts = Counter(min(e.assignments, 2) for e in self.jobs.values())
        never = sorted(job_id for job_id, e in self.jobs.items() if e.assignments == 0)
        doubled = sorted(job_id for job_id, e in self.jobs.items() if e.assignments > 1)
        # A job handed out that we never heard of is only explained by a submission
        # whose answer was lost in transport.
        unexplained = max(0, len(self.unknown_assigned) - self.ambiguous_submits)
        by_phase = Counter(e.phase for e in self.jobs.values())
        return {
            "accepted": len(self.jobs),
            "accepted_by_phase": dict(by_phase),
            "assigned_once": counts[1],
            "assigned_more_than_once": counts[2],
            "never_assigned": counts[0],
            "reported": sum(1 for e in self.jobs.values() if e.reported),
            "ambiguous_submits": self.ambiguous_submits,
            "unknown_assigned": len(self.unknown_assigned),
            "program_mismatches": len(self.mismatched),
            "duplicate_job_ids": len(self.duplicate_ids),
            "report_refusals": dict(self.report_refusals),
            "examples": {
                "never_assigned": never[:5],
                "assigned_more_than_once": doubled[:5],
                "unknown_assigned": self.unknown_assigned[:5],
                "program_mismatches": self.mismatched[:5],
            },
            "ok": not (never or doubled or self.mismatched or self.duplicate_ids or unexplained),
        }

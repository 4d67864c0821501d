"""The PayloadStore interface: programs in, results out, through signed URLs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from job_manager.model import JobRecord


@dataclass(frozen=True)
class SignedUrl:
    """A URL that grants one kind of access to one object until ``expires_at``."""

    url: str
    expires_at: datetime


@dataclass(frozen=True)
class ObjectTags:
    """What the original deployment tags each object with; bucket lifecycle rules use them."""

    role: str  # the submitting token's role
    save_job: bool

    def as_tag_set(self, *, complete: bool = True) -> list[dict[str, str]]:
        """The S3 TagSet: ``token_role``, ``save_job``, and ``upload-status`` once final."""
        tags = [{"Key": "token_role", "Value": self.role},
                {"Key": "save_job", "Value": "true" if self.save_job else "false"}]
        if complete:
            tags.append({"Key": "upload-status", "Value": "complete"})
        return tags


def input_key(job_id: str) -> str:
    """The object name of a job's program: the serialized QuantumProgram."""
    return f"{job_id}.in.proto"


def result_key(job_id: str) -> str:
    """The object name of a job's result, as uploaded by the node (gzip)."""
    return f"{job_id}.out.proto.gz"


def handover_result_key(job_id: str, handover: int) -> str:
    """Where hand-over ``handover`` (0 for the first) uploads its result when jobs may be
    queued again: a key of its own, so that a node whose hand-over was lost can never write
    the final result (docs/protocol.md, "Results when jobs are queued again")."""
    return f"{job_id}.handover-{handover}.out.proto.gz"


# Where the final result records the hand-over it was promoted from (S3 user metadata,
# standalone's headers file), so that a retried report after a promotion knows it is its own.
HANDOVER_META = "mqc3-handover"


class PayloadStore(Protocol):
    """Job inputs and results.

    Async methods raise :class:`~job_manager.stores.errors.StoreError` when the
    store cannot be reached; URL signing is local computation and does not fail.
    """

    async def put_input(self, job_id: str, program: bytes, tags: ObjectTags | None = None) -> None:
        """Store a job's program, tagged as the original tags it when ``tags`` are given."""
        ...

    async def get_input(self, job_id: str) -> bytes | None:
        """A job's program, or None when it is missing."""
        ...

    async def delete_input(self, job_id: str) -> None:
        """Remove a job's program; no error when it is already gone."""
        ...

    def upload_url(self, job_id: str, expires_in: timedelta,
                   handover: int | None = None) -> SignedUrl:
        """A URL a hardware node PUTs the job's result to: the final result's key (None,
        as the original), or hand-over ``handover``'s own key."""
        ...

    def download_url(self, job_id: str, expires_in: timedelta) -> SignedUrl:
        """A URL the job's owner GETs the result from."""
        ...

    async def result_exists(self, job_id: str, handover: int | None = None) -> bool:
        """True once a result has been uploaded for the job; with ``handover``, once that
        hand-over's result is there: its own object, or the final one promoted from it."""
        ...

    async def promote_result(self, job_id: str, handover: int) -> bool:
        """Make hand-over ``handover``'s upload the job's final result (its headers kept,
        then its own object removed); True when the final result is that hand-over's,
        now or from an earlier promotion. Repeating it is harmless."""
        ...

    async def discard_results(self, job_id: str, handovers: Sequence[int]) -> None:
        """Remove these hand-overs' own uploads, if any (those of lost hand-overs)."""
        ...

    async def seal_result(self, job_id: str, tags: ObjectTags) -> None:
        """The job's result is final: tag it as the original does (``upload-status=complete``)."""
        ...

    async def close(self) -> None:
        """Release connections and threads; idempotent."""
        ...


@runtime_checkable
class InputsBesideRecords(Protocol):
    """A PayloadStore that keeps programs in the JobStore's own database, so that a new
    job's program and record are one atomic write instead of two in turn (standalone:
    docs/design.md, "Standalone storage")."""

    async def create_with_input(self, record: JobRecord, program: bytes) -> None:
        """Store a new job's record and program together: both, or neither (raising as
        JobStore.create does)."""
        ...

    async def get_inputs(self, job_ids: Sequence[str]) -> dict[str, bytes]:
        """The programs of these jobs that the database holds, by job id, in one read (a
        job missing here may still have a program where ``get_input`` looks)."""
        ...

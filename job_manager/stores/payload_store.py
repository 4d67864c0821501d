"""The PayloadStore interface: programs in, results out, through signed URLs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol


@dataclass(frozen=True)
class SignedUrl:
    """A URL that grants one kind of access to one object until ``expires_at``."""

    url: str
    expires_at: datetime


def input_key(job_id: str) -> str:
    """The object name of a job's program: the serialized QuantumProgram."""
    return f"{job_id}.in.proto"


def result_key(job_id: str) -> str:
    """The object name of a job's result, as uploaded by the node (gzip)."""
    return f"{job_id}.out.proto.gz"


class PayloadStore(Protocol):
    """Job inputs and results.

    Async methods raise :class:`~job_manager.stores.errors.StoreError` when the
    store cannot be reached; URL signing is local computation and does not fail.
    """

    async def put_input(self, job_id: str, program: bytes) -> None:
        """Store a job's program."""
        ...

    async def get_input(self, job_id: str) -> bytes | None:
        """A job's program, or None when it is missing."""
        ...

    async def delete_input(self, job_id: str) -> None:
        """Remove a job's program; no error when it is already gone."""
        ...

    def upload_url(self, job_id: str, expires_in: timedelta) -> SignedUrl:
        """A URL a hardware node PUTs the job's result to."""
        ...

    def download_url(self, job_id: str, expires_in: timedelta) -> SignedUrl:
        """A URL the job's owner GETs the result from."""
        ...

    async def result_exists(self, job_id: str) -> bool:
        """True once a result has been uploaded for the job."""
        ...

    async def close(self) -> None:
        """Release connections and threads; idempotent."""
        ...

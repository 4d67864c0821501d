"""Where jobs are kept: a JobStore for records, a PayloadStore for programs and results.

Each is a narrow Protocol with an AWS implementation (production) and a standalone
one (a SQLite file, a local directory) side by side.
"""

from job_manager.stores.errors import (
    IndexMissing,
    KeyTaken,
    RecordTooNew,
    RecordUnreadable,
    StoreError,
)
from job_manager.stores.fence import Deposed, Fence
from job_manager.stores.job_store import Document, JobStore, Reached
from job_manager.stores.payload_store import (
    InputsBesideRecords,
    ObjectTags,
    PayloadStore,
    SignedUrl,
)

__all__ = [
    "Deposed",
    "Document",
    "Fence",
    "IndexMissing",
    "InputsBesideRecords",
    "JobStore",
    "KeyTaken",
    "ObjectTags",
    "PayloadStore",
    "Reached",
    "RecordTooNew",
    "RecordUnreadable",
    "SignedUrl",
    "StoreError",
]

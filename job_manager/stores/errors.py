"""The storage edge's one error type: whatever botocore or sqlite3 raised, translated."""


class StoreError(Exception):
    """A store call failed; the operation did not happen (or its outcome is unknown)."""


class KeyTaken(Exception):
    """A new record's idempotency key already names another job of its owner within the
    key's window, so nothing was stored: that other job is the submission."""


class RecordUnreadable(StoreError):
    """A record is there but cannot be read (corrupt, or a form this scheduler does not know).

    It is left untouched; other records are served (docs/job-rules.md, rule 13).
    """

    def __init__(self, job_id: str, why: str) -> None:
        super().__init__(f"the record of job {job_id} cannot be read: {why}")
        self.job_id = job_id
        self.why = why


class IndexMissing(StoreError):
    """A query needs an index the table lacks (DynamoDB's ``owner-index``); an operator adds it."""

    def __init__(self, index: str) -> None:
        super().__init__(f"the table has no index {index!r}")
        self.index = index


class RecordTooNew(StoreError):
    """A transition was refused, changing nothing: the record is stored in a newer format than
    this scheduler writes, so it serves the job read-only (docs/records.md)."""

    def __init__(self, job_id: str, format_version: int) -> None:
        super().__init__(f"the record of job {job_id} is in format {format_version}, "
                         "newer than this scheduler writes; it was left unchanged")
        self.job_id = job_id
        self.format_version = format_version

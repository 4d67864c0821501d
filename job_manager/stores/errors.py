"""The storage edge's one error type: whatever botocore or sqlite3 raised, translated."""


class StoreError(Exception):
    """A store call failed; the operation did not happen (or its outcome is unknown)."""

"""The storage edge's one error type: whatever botocore or sqlite3 raised, translated."""


class StoreError(Exception):
    """A store call failed; the operation did not happen (or its outcome is unknown)."""


class KeyTaken(Exception):
    """A new record's idempotency key already names another job of its owner within the
    key's window, so nothing was stored: that other job is the submission."""

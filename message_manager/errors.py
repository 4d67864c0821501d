"""The one exception type for refusals a user or a node is meant to see."""

from __future__ import annotations

from message_manager.keys import ErrorKey


class SchedulerError(Exception):
    """A refusal named by its catalogue key, with the values its message needs.

    Raised anywhere inside the service; translated once, at the gRPC edge, into
    an ``ErrorDetail`` through the catalogue.
    """

    def __init__(self, key: ErrorKey, **params: object) -> None:
        from message_manager.catalogue import default_catalogue

        entry = default_catalogue().entry(key)  # a misspelt key fails here, loudly
        super().__init__(entry.render(params))
        self.key = key
        self.code = entry.code
        self.params = params

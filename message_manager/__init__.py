"""User-visible errors: one catalogue of codes and messages, one exception type."""

from message_manager.catalogue import Catalogue, default_catalogue
from message_manager.errors import SchedulerError
from message_manager.keys import ErrorKey

__all__ = ["Catalogue", "ErrorKey", "SchedulerError", "default_catalogue"]

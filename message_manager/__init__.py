"""User-visible errors: one catalogue of codes and messages, one exception type."""

from message_manager.catalogue import Catalogue, default_catalogue
from message_manager.errors import SchedulerError

__all__ = ["Catalogue", "SchedulerError", "default_catalogue"]

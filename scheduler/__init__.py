"""The MQC3 scheduler service: configuration, wiring and lifecycle, and the gRPC edge."""

from scheduler.version import __version__

__all__ = ["__version__"]

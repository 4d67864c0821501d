"""The scheduler's version, reported to users as execution_details.version.scheduler_version."""

__version__ = "0.1.0"

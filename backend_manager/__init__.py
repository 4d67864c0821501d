"""Which backends exist and whether each is open to each role, reloaded while running."""

from backend_manager.liveness import NodeLiveness
from backend_manager.manager import BackendManager
from backend_manager.sources import FileBackendSource, SsmBackendSource
from backend_manager.status import BackendConfigError, BackendTable, RoleStatus, ServiceStatus

__all__ = [
    "BackendConfigError",
    "BackendManager",
    "BackendTable",
    "FileBackendSource",
    "NodeLiveness",
    "RoleStatus",
    "ServiceStatus",
    "SsmBackendSource",
]

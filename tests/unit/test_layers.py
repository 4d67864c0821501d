"""Packages import downwards only (docs/design.md): a layering that any upward import breaks.

Read from the source with ast, every import statement, also those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "message_manager", "backend_manager", "job_manager", "token_database",
            "leadership", "scheduler")
# What each package may import besides itself (pb, the generated protocol, is a leaf).
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "message_manager": {"common"},
    "backend_manager": {"common", "message_manager"},
    "job_manager": {"common", "message_manager", "backend_manager", "pb"},
    "token_database": {"common", "pb"},
    "leadership": {"common"},
    "scheduler": {"common", "message_manager", "backend_manager", "job_manager",
                  "token_database", "leadership", "pb"},
}


def _imported_packages(path: Path) -> set[str]:
    return _top_level_imports(path) & {*PACKAGES, "pb"}


def test_every_package_imports_only_the_packages_below_it() -> None:
    upward = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            wrong = _imported_packages(path) - ALLOWED[package] - {package}
            if wrong:
                upward[str(path.relative_to(ROOT))] = sorted(wrong)
    assert upward == {}


def test_the_layering_test_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "leaf.py"
    module.write_text("def f():\n    from scheduler.app import Scheduler\n")
    assert _imported_packages(module) == {"scheduler"}


# --- narrower contracts inside the layers (docs/design.md) ----------------------------------
TRANSPORT = {"grpc", "grpc_health", "grpc_reflection", "aiohttp", "scheduler", "pb"}


def _top_level_imports(path: Path) -> set[str]:
    """Every top-level package ``path`` imports, ours or not."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _breaking(folder: str, forbidden: set[str],
              allowed_files: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """The files under ``folder`` (but ``allowed_files``) importing a ``forbidden``
    package other than their own."""
    forbidden = forbidden - {folder.split("/")[0]}
    return {str(path.relative_to(ROOT)): sorted(wrong)
            for path in sorted((ROOT / folder).rglob("*.py"))
            if str(path.relative_to(ROOT)) not in allowed_files
            and (wrong := _top_level_imports(path) & forbidden)}


def test_the_stores_never_import_the_transport() -> None:
    # The original's record format is the one place the wire's messages are a store's.
    assert _breaking("job_manager/stores", TRANSPORT,
                     frozenset({"job_manager/stores/original_format.py"})) == {}


def test_the_wire_stubs_stay_out_of_the_core() -> None:
    for folder in ("job_manager", "backend_manager", "message_manager", "leadership", "common"):
        assert _breaking(folder, {"pb", "grpc"},
                         frozenset({"job_manager/stores/original_format.py"})) == {}, folder


def test_common_and_leadership_stay_leaves() -> None:
    ours = {*PACKAGES, "pb", "tests", "benchmarks", "emulators", "tools"}
    assert _breaking("common", ours) == {}
    assert _breaking("leadership", ours - {"common"}) == {}


def test_the_emulator_is_no_part_of_the_service() -> None:
    for package in PACKAGES:
        assert _breaking(package, {"emulators", "tests", "benchmarks"}) == {}, package


# --- the job manager's rooms (docs/design.md, "The job manager") ----------------------------
# Each phase may import the core and the phases before it; none imports a later one.
PHASES: dict[str, set[str]] = {
    "inputs": set(),
    "core": set(),
    "recovery": {"core"},
    "liveness": {"core"},
    "submission": {"core", "inputs", "recovery"},
    "handover": {"core", "inputs", "liveness", "recovery"},
    "owner_changes": {"core"},
    "reads": {"core"},
    "reservations": {"core"},
}


def _modules(path: Path) -> set[str]:
    """Every module ``path`` imports, by its dotted name (``from a import b`` gives a.b too,
    since b may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _phases_imported(path: Path) -> set[str]:
    prefix = "job_manager.phases."
    return {name.removeprefix(prefix).split(".")[0] for name in _modules(path)
            if name.startswith(prefix)}


def test_each_phase_imports_only_the_core_and_the_phases_before_it() -> None:
    folder = ROOT / "job_manager" / "phases"
    assert {path.stem for path in folder.glob("*.py")} - {"__init__"} == set(PHASES)
    wrong = {name: sorted(found - allowed - {name})
             for name, allowed in PHASES.items()
             if (found := _phases_imported(folder / f"{name}.py")) - allowed - {name}}
    assert wrong == {}


def test_only_the_facade_reaches_the_phases_and_nothing_reaches_the_ledgers_parts() -> None:
    # The servicers and the router call the facade (job_manager/manager.py); the ledger,
    # the watchdog, the quotas and the waiting nodes are the ledger's alone.
    private = ("job_manager.phases", "job_manager.ledger", "job_manager.watchdog",
               "job_manager.waiters")
    reaching = {}
    for package in ("scheduler", "leadership", "backend_manager", "token_database"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if found := sorted(n for n in _modules(path) if n.startswith(private)):
                reaching[str(path.relative_to(ROOT))] = found
    for path in sorted((ROOT / "job_manager").glob("*.py")):
        if path.name not in {"manager.py"} and _phases_imported(path):
            reaching[str(path.relative_to(ROOT))] = sorted(_phases_imported(path))
    assert reaching == {}


def test_the_phase_check_sees_a_later_phase_imported(tmp_path: Path) -> None:
    module = tmp_path / "core.py"
    module.write_text("def f():\n    from job_manager.phases.handover import HandOver\n")
    assert _phases_imported(module) == {"handover"}


# --- scheduler/'s rooms (docs/design.md, "Where things live") -------------------------------
# Each room may import the rooms listed for it (and scheduler/version.py); wiring builds the
# house and may import every room, and no room imports wiring.
ROOMS: dict[str, set[str]] = {
    "messages": set(),
    "access": set(),
    "operations": set(),
    "replication": {"messages", "access", "operations"},
    "services": {"messages", "access", "operations", "replication"},
    "wiring": {"messages", "access", "operations", "replication", "services"},
}


def _rooms_imported(path: Path) -> set[str]:
    return {name.split(".")[1] for name in _modules(path)
            if name.startswith("scheduler.") and name.split(".")[1] in ROOMS}


def test_each_room_of_the_scheduler_imports_only_the_rooms_below_it() -> None:
    folder = ROOT / "scheduler"
    rooms = {path.name for path in folder.iterdir() if (path / "__init__.py").is_file()}
    assert rooms == set(ROOMS)
    assert {path.name for path in folder.glob("*.py")} == {"__init__.py", "version.py"}
    wrong = {str(path.relative_to(ROOT)): sorted(found)
             for room, allowed in ROOMS.items()
             for path in sorted((folder / room).rglob("*.py"))
             if (found := _rooms_imported(path) - allowed - {room})}
    assert wrong == {}


def test_the_room_check_sees_wiring_imported(tmp_path: Path) -> None:
    module = tmp_path / "edge.py"
    module.write_text("from scheduler.wiring.config import Config\n")
    assert _rooms_imported(module) == {"wiring"}

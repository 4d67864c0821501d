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
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & {*PACKAGES, "pb"}


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

"""House rules read from the source with ast (issue 29).

An object's state is changed only through its own operations: a module assigns to
attributes of ``self`` or ``cls`` alone, and never changes another object's attribute,
nor the collection behind one (``lease.addresses = ...``, ``lease.listeners.append(...)``
or ``self._lease.addresses = ...``). The owner gets a method that says what happens.

Every package of the service is held.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELD = ("scheduler", "job_manager", "leadership", "backend_manager", "token_database",
        "common", "message_manager")
OWN = frozenset({"self", "cls"})
# Methods that change the collection they are called on.
MUTATORS = frozenset({"append", "appendleft", "extend", "insert", "add", "update", "pop",
                      "popitem", "remove", "discard", "clear", "setdefault", "sort", "reverse"})
# What may change another object's attribute, by file and target, and why.
ALLOWED: dict[tuple[str, str], str] = {
    # A function's name, as argparse shows it in an error.
    ("scheduler/wiring/config.py", "listen_address.__name__"): "argparse's way",
    # Protocol buffer messages being built: setting a field is how one is made.
    ("scheduler/messages/convert.py", "stamp.seconds"): "a message being built",
    ("scheduler/messages/convert.py", "stamp.nanos"): "a message being built",
    ("scheduler/messages/convert.py", "details.version.scheduler_version"): "a message being built",
    ("scheduler/messages/convert.py",
     "details.version.physical_lab_version"): "a message being built",
    ("scheduler/messages/convert.py", "details.version.simulator_version"): "a message being built",
    ("scheduler/messages/validation.py", "settings.role"): "a message being built (a copy)",
    # aiohttp's application being built: its signals are lists by design.
    ("scheduler/services/http_server.py", "app.on_response_prepare.append"): "aiohttp's way",
    # The standard library's logging: loggers, handlers and records are configured and
    # annotated by setting their attributes (a Filter may change the record it is given).
    ("common/audit.py", "_audit.propagate"): "logging's way",
    ("common/logs.py", "root.handlers"): "logging's way",
    ("common/logs.py", "logging.logThreads"): "logging's way",
    ("common/logs.py", "logging.logProcesses"): "logging's way",
    ("common/logs.py", "logging.logMultiprocessing"): "logging's way",
    ("common/logs.py", "logging._srcfile"): "logging's way",
    ("common/logs.py", "record.request_id"): "logging's way",
    ("common/logs.py", "record.call"): "logging's way",
    ("common/logs.py", "record.msg"): "logging's way",
}


def _own(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in OWN


def _targets(target: ast.expr) -> list[ast.expr]:
    """The single targets of an assignment's target (tuples and lists unpacked)."""
    if isinstance(target, ast.Tuple | ast.List):
        return [single for element in target.elts for single in _targets(element)]
    if isinstance(target, ast.Starred):
        return _targets(target.value)
    return [target]


def _changed_attribute(target: ast.expr) -> ast.Attribute | None:
    """The attribute of another object that assigning to ``target`` changes, if any:
    ``x.a = ...``, ``self.x.a = ...``, ``x.a[k] = ...``."""
    if isinstance(target, ast.Subscript):
        target = target.value
    if isinstance(target, ast.Attribute) and not _own(target.value):
        return target
    return None


def _changes(tree: ast.AST) -> list[tuple[int, str]]:
    """Each change of another object's attribute in ``tree``: (line, what is changed)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.Delete):
            targets = [single for target in node.targets for single in _targets(target)]
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = _targets(node.target)
        for target in targets:
            if (attribute := _changed_attribute(target)) is not None:
                found.append((target.lineno, ast.unparse(attribute)))
        if isinstance(node, ast.Call):
            called = node.func
            if (isinstance(called, ast.Attribute) and called.attr in MUTATORS
                    and isinstance(called.value, ast.Attribute) and not _own(called.value.value)):
                found.append((node.lineno, ast.unparse(called)))
            elif (isinstance(called, ast.Name) and called.id in ("setattr", "delattr")
                  and node.args and not _own(node.args[0])):
                found.append((node.lineno, f"{called.id}({ast.unparse(node.args[0])}, ...)"))
    return sorted(found)


def changes_of_others(package: str) -> list[str]:
    """``path:line: target`` for each change of another object's attribute under
    ``package`` that ALLOWED does not name."""
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        for line, target in _changes(ast.parse(path.read_text())):
            if (relative, target) not in ALLOWED:
                found.append(f"{relative}:{line}: {target}")
    return found


def test_no_module_changes_another_objects_attributes() -> None:
    assert [change for package in HELD for change in changes_of_others(package)] == []


def test_every_allowed_change_is_still_there() -> None:
    """An entry whose line went away is removed, so the list never outlives its reasons."""
    present = {(str(path.relative_to(ROOT)), target)
               for package in HELD for path in sorted((ROOT / package).rglob("*.py"))
               for _, target in _changes(ast.parse(path.read_text()))}
    assert set(ALLOWED) - present == set()


def test_the_rule_sees_each_way_of_changing_another_object() -> None:
    source = """
class Owner:
    def __init__(self, lease, health):
        self.own = 1                         # its own: allowed
        self.items = []
        self.items.append(1)                 # its own collection: allowed
        self._lease = lease
        lease.addresses = ("a", "b")
        health.loops_down += 1
        self._lease.addresses = ()           # an attribute of its attribute
        lease.listeners.append(print)
        self._lease.listeners.append(print)
        lease.table["k"] = 1
        setattr(lease, "epoch", 2)
        del lease.current
        a, lease.me = 1, "x"
        local = {}
        local["k"] = 1                       # a local: allowed
"""
    assert [target for _, target in _changes(ast.parse(source))] == [
        "lease.addresses", "health.loops_down", "self._lease.addresses",
        "lease.listeners.append", "self._lease.listeners.append", "lease.table",
        "setattr(lease, ...)", "lease.current", "lease.me"]

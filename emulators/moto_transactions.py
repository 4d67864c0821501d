"""moto's DynamoDB without its whole-table copy per transaction action (docs/emulators.md).

moto (5.2) makes ``transact_write_items`` all-or-nothing by deep-copying every table a
transaction names, once per action, and putting the copy back when an action fails: a
transaction of k actions on a table of n items costs O(k·n), and the copy iterates the
table while other request threads write to it ("dictionary changed size during
iteration", an HTTP 500). DynamoDB has neither cost.

``install()`` replaces it with what DynamoDB promises and nothing dearer: every action's
condition is checked first, against the items as they are; only when all hold are the
writes made, and should a write fail, the few items it touched are put back. One lock
holds each DynamoDB call of the backend whole, so a transaction is atomic against every
other call, as it is on DynamoDB. Calls are short once the copy is gone; the time
DynamoDB takes is the model's to add (emulators/dynamodb_model.py).

moto's backends are one set per process, so two servers in one process (the tests' patched
and plain ones) share them: ``plain_moto(app)`` marks a server's requests, and those run
moto's own code, unpatched and unlocked.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable
from typing import Any

from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend

MAX_ACTIONS = 100  # DynamoDB's limit on one transaction
_WRITE_TYPES = ("ConditionCheck", "Put", "Delete", "Update")
# The backend's calls that read or change items: each runs whole under the one lock.
_ITEM_CALLS = ("put_item", "get_item", "update_item", "delete_item", "query", "scan",
               "create_table", "delete_table", "update_table",
               "update_time_to_live", "execute_statement", "execute_transaction",
               "batch_execute_statement")

_lock = threading.RLock()
_installed = False
_this_request = threading.local()  # .plain: the request came through a plain_moto app

# A transaction's outcome per action: (reason code, message, old item) or (None, None, None).
Reason = tuple[str | None, str | None, dict[str, Any] | None]


def install() -> None:
    """Patch moto's DynamoDB backend in this process (once; later calls do nothing)."""
    global _installed
    with _lock:
        if _installed:
            return
        for name in _ITEM_CALLS:
            setattr(DynamoDBBackend, name, _whole(getattr(DynamoDBBackend, name)))
        DynamoDBBackend.transact_write_items = _whole(  # type: ignore[method-assign]
            transact_write_items, DynamoDBBackend.transact_write_items)
        _installed = True


def plain_moto(app: Callable[..., Any]) -> Callable[..., Any]:
    """A WSGI app whose requests run moto's own code, even where install() patched it."""
    def plain(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        _this_request.plain = True
        try:
            return app(environ, start_response)
        finally:
            _this_request.plain = False
    return plain


def _whole(call: Callable[..., Any], own: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """``call`` under the lock; ``own`` (moto's own code: ``call`` itself when None) unlocked
    for a plain moto's request."""
    moto_own = own or call

    @functools.wraps(moto_own)
    def locked(*args: Any, **kwargs: Any) -> Any:
        if getattr(_this_request, "plain", False):
            return moto_own(*args, **kwargs)
        with _lock:
            return call(*args, **kwargs)
    return locked


def transact_write_items(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """All actions or none, checked first and then written: no table is copied."""
    if len(transact_items) > MAX_ACTIONS:
        raise TooManyTransactionsException()
    actions = [_action(backend, item) for item in transact_items]
    _no_item_twice(actions)
    reasons = [_checked(backend, action) for action in actions]
    if any(code is not None for code, _, _ in reasons):
        raise TransactionCanceledException(reasons)
    _write_all(backend, actions)


class _Action:
    """One action of a transaction: its kind, its table, its item's key and its request."""

    def __init__(self, kind: str, table_name: str, key: dict[str, Any],
                 request: dict[str, Any]) -> None:
        self.kind = kind
        self.table_name = table_name
        self.key = key
        self.request = request


def _action(backend: DynamoDBBackend, item: dict[str, Any]) -> _Action:
    if len(item) > 1:
        raise TransactWriteSingleOpException()
    kind, request = next(iter(item.items()))
    if kind not in _WRITE_TYPES:
        raise MockValidationException(f"Unsupported transaction operation: {kind}")
    table_name = request["TableName"]
    if kind == "Put":
        table = backend.get_table(table_name)
        attrs = request["Item"]
        key = {table.hash_key_attr: attrs[table.hash_key_attr]}
        if table.range_key_attr is not None:
            key[table.range_key_attr] = attrs[table.range_key_attr]
    else:
        key = request["Key"]
    return _Action(kind, table_name, key, request)


def _no_item_twice(actions: list[_Action]) -> None:
    seen: set[tuple[str, str]] = set()
    for action in actions:
        name = (action.table_name, str(sorted(action.key.items())))
        if name in seen:
            raise MultipleTransactionsException()
        seen.add(name)


def _checked(backend: DynamoDBBackend, action: _Action) -> Reason:
    """The action's condition against the item as it is now: None when it holds."""
    request = action.request
    try:
        current = backend.get_item(action.table_name, action.key)
        expression = request.get("ConditionExpression")
        if expression is not None:
            condition = get_filter_expression(expression,
                                              request.get("ExpressionAttributeNames"),
                                              request.get("ExpressionAttributeValues"))
            if not condition.expr(current):
                old = (current.to_json()["Attributes"]
                       if request.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD"
                       and current else None)
                return ("ConditionalCheckFailed", "The conditional request failed", old)
    except (MultipleTransactionsException, MockValidationException):
        raise
    except Exception as exc:  # noqa: BLE001 - the action's reason, as moto reports it
        return (type(exc).__name__, str(exc), None)
    return (None, None, None)


def _write_all(backend: DynamoDBBackend, actions: list[_Action]) -> None:
    """Make every write; should one fail, put back the items written before it."""
    before = [(action, copy.deepcopy(backend.get_item(action.table_name, action.key)))
              for action in actions if action.kind != "ConditionCheck"]
    for at, (action, _) in enumerate(before):
        try:
            _write(backend, action)
        except Exception as exc:
            for undone, old in before[:at]:
                _restore(backend, undone, old)
            if isinstance(exc, MockValidationException):
                raise
            reasons: list[Reason] = [(None, None, None)] * len(actions)
            reasons[actions.index(action)] = (type(exc).__name__, str(exc), None)
            raise TransactionCanceledException(reasons) from exc


def _write(backend: DynamoDBBackend, action: _Action) -> None:
    request = action.request
    names: Any = request.get("ExpressionAttributeNames")
    values: Any = request.get("ExpressionAttributeValues")
    if action.kind == "Put":
        backend.put_item(action.table_name, request["Item"],
                         expression_attribute_names=names, expression_attribute_values=values)
    elif action.kind == "Delete":
        backend.delete_item(action.table_name, action.key,
                            expression_attribute_names=names,
                            expression_attribute_values=values)
    else:
        backend.update_item(action.table_name, action.key,
                            update_expression=request["UpdateExpression"],
                            expression_attribute_names=names,
                            expression_attribute_values=values)


def _restore(backend: DynamoDBBackend, action: _Action, old: Any) -> None:
    if old is None:
        backend.delete_item(action.table_name, action.key)
    else:
        backend.put_item(action.table_name, old.to_json()["Attributes"])

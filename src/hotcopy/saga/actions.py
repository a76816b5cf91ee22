"""The registry of undo actions: names that a journal entry can be turned back into code.

Undo entries are stored as data (a name plus JSON parameters) so that a process that
never saw the forward change, perhaps on another host after the controller died, can
still run the undo. That only works if the name resolves to the same function in every
process, which is why each part registers its actions at import time under a stable,
dotted name ("mysql.start_sql_thread") and why an unknown name is reported as a missing
import rather than as a corrupt journal.
"""

from __future__ import annotations

import logging
import string
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hotcopy.errors import HotcopyError

log = logging.getLogger(__name__)

UndoFn = Callable[[Any, Mapping[str, Any]], None]
"""``fn(context, params)``: the context is whatever the workflows pass; saga never looks."""

_registry: dict[str, UndoAction] = {}
_registry_lock = threading.Lock()


class UnknownUndoAction(HotcopyError):
    """A journal names an action this process cannot run, usually a missing import."""

    def __init__(self, name: str) -> None:
        known = ", ".join(registered()) or "none"
        super().__init__(
            f"undo action '{name}' is not registered in this process: the module that "
            f"registers it (with @undo_action('{name}', ...)) was not imported",
            hint=f"import the part of hotcopy that owns '{name}' before running or "
            f"rolling back; registered actions: {known}",
        )
        self.name = name


class _KeepMissing(dict[str, Any]):
    """Leaves unknown placeholders visible, so a description never hides a missing value."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


@dataclass(frozen=True)
class UndoAction:
    name: str
    fn: UndoFn
    describe: str

    def describe_with(self, params: Mapping[str, Any]) -> str:
        """Render the template for humans; never raises, because it runs on error paths."""
        try:
            return string.Formatter().vformat(self.describe, (), _KeepMissing(params))
        except (IndexError, KeyError, AttributeError, ValueError, TypeError):
            # A template like "{server.name}" against odd params must not turn a
            # report of what is left to undo into a second failure.
            return f"{self.describe} (params: {', '.join(sorted(params))})"


def _same_function(a: UndoFn, b: UndoFn) -> bool:
    # A module imported twice (reload, or under two names in tests) makes a new
    # function object for the same source; that is a re-registration, not a clash.
    if a is b:
        return True
    return bool(
        getattr(a, "__module__", None) == getattr(b, "__module__", None)
        and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
    )


def undo_action(name: str, *, describe: str) -> Callable[[UndoFn], UndoFn]:
    """Register ``fn`` under ``name``; two different functions under one name is a bug.

    The function itself is returned unchanged so it can also be called directly.
    ``describe`` is logged at INFO and shown in reports, so it must not name secrets.
    """
    if not name or not name.strip():
        raise ValueError("an undo action needs a non-empty name")

    def register(fn: UndoFn) -> UndoFn:
        with _registry_lock:
            existing = _registry.get(name)
            if existing is not None and not _same_function(existing.fn, fn):
                raise ValueError(
                    f"undo action '{name}' is already registered by "
                    f"{existing.fn.__module__}.{existing.fn.__qualname__}; "
                    f"refusing to replace it with {fn.__module__}.{fn.__qualname__}"
                )
            _registry[name] = UndoAction(name=name, fn=fn, describe=describe)
        log.debug("registered undo action %s", name)
        return fn

    return register


def lookup(name: str) -> UndoAction:
    """Resolve a stored action name; raises UnknownUndoAction if nothing registered it."""
    with _registry_lock:
        action = _registry.get(name)
    if action is None:
        raise UnknownUndoAction(name)
    return action


def registered() -> list[str]:
    """Names known to this process, sorted: what a rollback here would be able to run."""
    with _registry_lock:
        return sorted(_registry)

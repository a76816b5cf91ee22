"""Loading the backend modules named in a registry (snapshot backends, transfer methods).

Importing a backend module is what registers its undo actions, so a rollback in a fresh
process must import every backend a job may have used before it replays the journal.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping


def import_available(modules: Mapping[str, str]) -> list[str]:
    """Import each module of ``{name: module path}``; return the names that exist."""
    loaded = []
    for name, module in modules.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise  # the backend exists but one of its own imports is missing
            continue
        loaded.append(name)
    return loaded

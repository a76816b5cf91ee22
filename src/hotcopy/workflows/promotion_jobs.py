"""Which workflow module resumes or rolls back a job of a given kind.

``hotcopy resume`` and ``hotcopy rollback`` take a job id; the job's kind in the
journal decides which step list and which rules (the point of no return) apply.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

log = logging.getLogger(__name__)

_MODULES = {"switchover": "hotcopy.workflows.switchover",
            "failover": "hotcopy.workflows.failover",
            "rejoin": "hotcopy.workflows.rejoin"}


def module_for(kind: str) -> ModuleType | None:
    """The workflow module of a promotion kind, or None for the clone's kinds."""
    name = _MODULES.get(kind)
    return importlib.import_module(name) if name else None

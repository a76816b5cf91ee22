"""The clone's hooks: ``[hooks] pre_clone``, ``before_stop_target``, ``after_commit``,
``on_rollback``, as journaled steps (the last one after a rollback).

Operators drain a replica from a load balancer or proxy before its mysqld stops and put
it back once the new copy is committed; a ``pre_clone`` hook can veto the clone before
anything changed (exit 2). Each hook gets the job's names and addresses in its
environment, never a secret; hooks.run_hook bounds it with ``hooks.hook_timeout_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hotcopy.hooks import run_hook
from hotcopy.progress import Reporter
from hotcopy.runtime import Runtime
from hotcopy.saga import Journal
from hotcopy.workflows.runner import StepContext

log = logging.getLogger(__name__)


def hook_env(runtime: Runtime, job_id: str, params: Mapping[str, Any]) -> dict[str, str]:
    env = {"HOTCOPY_JOB_ID": job_id, "HOTCOPY_KIND": "clone"}
    for role in ("source", "target"):
        name = str(params[role])
        address = runtime.address(name)
        key = f"HOTCOPY_{role.upper()}"
        env[key] = name
        env[f"{key}_HOST"] = address.host
        env[f"{key}_PORT"] = str(address.port)
    return env


def _step(ctx: StepContext, name: str) -> dict[str, Any]:
    argv = getattr(ctx.runtime.config.hooks, name)
    run_hook(ctx.runtime.config, name, hook_env(ctx.runtime, ctx.job_id, ctx.params),
             ctx.reporter)
    return {"_detail": f"ran {argv[0]}" if argv else "none configured"}


def pre_clone(ctx: StepContext) -> dict[str, Any]:
    """Before the first change: a failing hook refuses the clone (HookFailed, exit 2)."""
    return _step(ctx, "pre_clone")


def before_stop_target(ctx: StepContext) -> dict[str, Any]:
    return _step(ctx, "before_stop_target")


def after_commit(ctx: StepContext) -> dict[str, Any]:
    """The clone stands whatever this hook does: a failure is a warning."""
    return _step(ctx, "after_commit")


def on_rollback(runtime: Runtime, journal: Journal, job_id: str, params: Mapping[str, Any],
                reporter: Reporter) -> None:
    """After a rollback ran (not after a refusal: nothing changed then); recorded."""
    if not runtime.config.hooks.on_rollback:
        return
    run_hook(runtime.config, "on_rollback", hook_env(runtime, job_id, params), reporter)
    journal.update_job_info(job_id, on_rollback_hook="ran")

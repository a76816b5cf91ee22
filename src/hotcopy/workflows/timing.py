"""What a clone costs the people waiting on it, measured per job (issue 13).

The step table says how long each step took; these figures say what an operator
asks: how long the target did not answer (from the moment its old mysqld was asked
to stop to the moment the new one accepts sessions), how long until the new replica
was caught up, and what verification cost on top. They are wall-clock times kept in
the job's outputs, so a job resumed in another process still measures them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hotcopy.workflows import target_steps, verify
from hotcopy.workflows.runner import StepContext

log = logging.getLogger(__name__)


def stop_target(ctx: StepContext) -> dict[str, Any]:
    """Stop the old target, noting when its downtime began (before the shutdown starts:
    a mysqld shutting down already refuses new sessions)."""
    stopping_at = time.time()
    outputs = target_steps.stop_target(ctx)
    if outputs.get("target_was_running"):
        outputs["target_stopped_at"] = stopping_at
    return outputs


def record_downtime(ctx: StepContext) -> dict[str, Any]:
    """After the new mysqld answers: the target's downtime, or why there is none."""
    stopped_at = ctx.state.get("target_stopped_at")
    if stopped_at is None:
        ctx.info(target_downtime_ms=None)
        return {"target_downtime_ms": None}
    downtime_ms = round((time.time() - float(stopped_at)) * 1000, 1)
    ctx.info(target_downtime_ms=downtime_ms)
    return {"target_downtime_ms": downtime_ms}


def catch_up(ctx: StepContext) -> dict[str, Any]:
    """Catch up, then record the time from the job's start to a caught-up replica: the
    figure to compare with other tools (verification comes on top, reported apart)."""
    outputs = target_steps.catch_up(ctx)
    created = ctx.journal.get_job(ctx.job_id).created
    caught_up_ms = round((time.time() - created) * 1000, 1)
    ctx.info(time_to_caught_up_ms=caught_up_ms)
    return {**outputs, "time_to_caught_up_ms": caught_up_ms}


def verify_step(ctx: StepContext) -> dict[str, Any]:
    """Verification with its own cost recorded, whatever mode ran."""
    started = time.monotonic()
    outputs = verify.verify(ctx)
    verify_ms = round((time.monotonic() - started) * 1000, 1)
    ctx.info(verify_ms=verify_ms)
    return {**outputs, "verify_ms": verify_ms}

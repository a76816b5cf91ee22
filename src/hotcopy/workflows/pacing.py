"""The latency throttle, wired into a clone: the baseline before the copy, the pace during it.

The baseline is taken at the end of ``serve``, the last moment before the copy reads the
snapshot, when none of the job's copy runs: a resume undoes ``serve`` (stopping what the
first attempt left running) and serves again, so its baseline is taken with no copy
running either. It is journaled with the step, so ``show`` can tell the limit.
transfer.throttle says how the rate is decided; this module gives it its probe (the
source, on its own session), its actuator (the method's ``set_rate``, fenced like every
other change a controller makes on a host) and its reports (job info, the bar).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from hotcopy.errors import HotcopyError
from hotcopy.mysql.connection import Connection
from hotcopy.mysql.flavor.base import (
    Statement,
    integer_primary_key,
    key_range,
    latency_probe,
    point_read,
)
from hotcopy.mysql.server import Server
from hotcopy.transfer.base import PacedMethod, ServerHandle, TransferMethod
from hotcopy.transfer.throttle import (
    PROBE_TIMEOUT_S,
    Baseline,
    LatencyThrottle,
    PacingStatus,
)
from hotcopy.workflows.runner import StepContext

log = logging.getLogger(__name__)

#: Job info about the pace is journaled at most this often (and at the end of the copy).
STATUS_JOURNAL_INTERVAL_S = 5.0


INTEGER_TYPES = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint"}


@dataclass(frozen=True)
class ProbeTable:
    """transfer.latency_probe_table, resolved on the source: its integer key and range."""

    schema: str
    table: str
    column: str
    low: int
    high: int

    @classmethod
    def resolve(cls, server: Server, qualified: str) -> ProbeTable:
        schema, _, table = qualified.partition(".")
        key = server.query(integer_primary_key(schema, table))
        if len(key) != 1 or str(key[0]["type"]).lower() not in INTEGER_TYPES:
            raise HotcopyError(
                f"transfer.latency_probe_table {qualified} on {server.name} needs a primary "
                "key of one integer column" + ("" if key else " (no such table, or no "
                                               "primary key)"),
                hint="name a table clients read by an integer key, or leave the setting "
                     "out to probe mysql.innodb_table_stats")
        column = str(key[0]["name"])
        bounds = server.one(key_range(schema, table, column)) or {}
        if bounds.get("low") is None:
            raise HotcopyError(f"transfer.latency_probe_table {qualified} on {server.name} "
                               "is empty: there is nothing to probe",
                               hint="name a table with rows")
        return cls(schema, table, column, int(bounds["low"]), int(bounds["high"]))

    def statement(self) -> Statement:
        key = random.randint(self.low, self.high)  # noqa: S311 - a key to read, no secret
        return point_read(self.schema, self.table, self.column, key)


class SourceProbe:
    """The probe query on a session of its own, reopened after a failure."""

    def __init__(self, server: Server, table: ProbeTable | None = None) -> None:
        self._server = server
        self._table = table
        self._session: Connection | None = None

    @classmethod
    def for_clone(cls, ctx: StepContext) -> SourceProbe:
        server = ctx.runtime.server(ctx.params["source"])
        qualified = ctx.runtime.config.transfer.latency_probe_table
        return cls(server, ProbeTable.resolve(server, qualified) if qualified else None)

    def __call__(self) -> float:
        sql, args = latency_probe() if self._table is None else self._table.statement()
        try:
            if self._session is None:  # (re)connecting is not what the probe times
                self._session = self._server.new_session(read_timeout=PROBE_TIMEOUT_S)
            began = time.perf_counter()
            self._session.query(sql, args)
            return time.perf_counter() - began
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def factor(ctx: StepContext) -> float | None:
    return ctx.runtime.config.transfer.max_source_latency_factor


def measure_baseline(ctx: StepContext) -> dict[str, Any]:
    """Step outputs: the probe's latency on the source before the copy (none unpaced)."""
    if factor(ctx) is None:
        return {}
    probe = SourceProbe.for_clone(ctx)
    try:
        baseline = Baseline.measure(probe)
    finally:
        probe.close()
    log.info("source probe latency before the copy: median %.2f ms, p90 %.2f ms",
             baseline.median_s * 1e3, baseline.p90_s * 1e3)
    return {"latency_baseline": baseline.as_dict()}


@contextlib.contextmanager
def paced(ctx: StepContext, method: TransferMethod, handle: ServerHandle,
          done_bytes: Callable[[], int]) -> Iterator[LatencyThrottle | None]:
    """The throttle running for the duration of the copy, or None when it is off."""
    wanted = factor(ctx)
    if wanted is None or not hasattr(method, "set_rate") or "latency_baseline" not in ctx.state:
        yield None
        return
    paced_method = cast(PacedMethod, method)
    config = ctx.runtime.config.transfer
    probe = SourceProbe.for_clone(ctx)
    journaled = [0.0]

    def set_rate(rate: float | None) -> None:
        if ctx.may_act("pacing the copy"):
            paced_method.set_rate(ctx.runtime, handle, rate)

    def on_status(status: PacingStatus) -> None:
        ctx.reporter.pacing(status.summary())
        now = time.monotonic()
        if now - journaled[0] >= STATUS_JOURNAL_INTERVAL_S:
            journaled[0] = now
            ctx.info(pacing=status.as_dict())

    throttle = LatencyThrottle(
        probe, Baseline.from_dict(ctx.state["latency_baseline"]), wanted, set_rate, done_bytes,
        floor_bytes_s=config.throttle_floor_kbps * 1024,
        ceiling_bytes_s=config.bwlimit_kbps * 1024 if config.bwlimit_kbps else None,
        on_status=on_status)
    try:
        with throttle:
            yield throttle
    finally:
        probe.close()
        try:
            ctx.info(pacing=throttle.status.as_dict())
        except HotcopyError as exc:  # never in place of what ended the copy
            log.warning("the copy's pace was not journaled: %s", exc.message)


def outputs(throttle: LatencyThrottle | None, seconds: float, copied: int) -> dict[str, Any]:
    """What the pull step reports about the pace, and what it cost: the copy's time
    against the same bytes at the fastest rate the copy reached."""
    if throttle is None:
        return {}
    status = throttle.status
    cost = max(0.0, seconds - copied / status.peak_bytes_s) if status.peak_bytes_s else None
    return {"pacing": status.as_dict(), "pacing_cost_s": None if cost is None else round(cost, 1),
            "_pacing": f"paced {status.decreases}x down, {status.increases}x up; cost "
                       + ("unknown" if cost is None else f"~{cost:.1f}s")}

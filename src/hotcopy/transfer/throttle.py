"""Pace the copy so that the source's own queries stay within a factor of their latency.

Peers throttle on proxies: thread counts, replication lag, a fixed rate. What a DBA
promises the source's clients is query latency, so that is what is watched here: a
probe query (a read through InnoDB, on its own connection) is timed every 100 ms from
the controller, against the same probe's latency measured just before the copy
started. Every second the 90th percentile of that second's probes is compared with
``transfer.max_source_latency_factor`` x the baseline's, and the copy's rate follows
AIMD, as TCP's congestion window does: halved at once when the source suffers, raised
by a twentieth of the fastest rate seen while it does not. The rate never drops under
``transfer.throttle_floor_kbps``, so the copy always ends.

A probe that fails or times out counts as over the limit: a source that cannot answer
is the one the copy must leave alone. Only methods that can change their rate while
they run can be paced (the stream method, through ``pv --remote``).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger(__name__)

PROBE_EVERY_S = 0.1
DECIDE_EVERY_S = 1.0
BASELINE_SAMPLES = 30
#: A failed probe counts as this slow (it is also the probe's read timeout).
PROBE_TIMEOUT_S = 2.0
DECREASE = 0.5
INCREASE_FRACTION = 1 / 20
#: Over the limit at the floor this long: say that the copy is not the cause.
FLOOR_WARNING_S = 10.0
#: Decisions kept in memory; the journal gets the last 20.
HISTORY_KEPT = 600


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: a value that was observed, never an interpolation."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


@dataclass(frozen=True)
class Baseline:
    """The probe's latency on the undisturbed source, in seconds."""

    median_s: float
    p90_s: float
    samples: int

    @classmethod
    def measure(cls, probe: Callable[[], float], samples: int = BASELINE_SAMPLES,
                spacing_s: float = 0.05) -> Baseline:
        times = []
        for _ in range(samples):
            times.append(probe())
            time.sleep(spacing_s)
        return cls(statistics.median(times), percentile(times, 0.9), len(times))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        return cls(float(data["median_s"]), float(data["p90_s"]), int(data["samples"]))


@dataclass
class Aimd:
    """The rate decision, apart from any clock or host, so it can be reasoned about.

    ``rate`` is None while the copy is unpaced (it starts so, or at ``ceiling`` when a
    bandwidth limit is configured). Rates are bytes per second.
    """

    floor: float
    ceiling: float | None = None
    rate: float | None = None
    peak: float = 0.0

    def __post_init__(self) -> None:
        if self.rate is None and self.ceiling is not None:
            self.rate = self.ceiling

    def decide(self, latency_s: float, limit_s: float, achieved: float) -> float | None:
        """The next rate, given the last interval's latency and the rate it achieved."""
        self.peak = max(self.peak, achieved)
        if latency_s > limit_s:
            # From what the copy did, when it moved at all: a pace it did not reach
            # would be no slower once halved.
            current = achieved if self.rate is None else self.rate
            if achieved > 0:
                current = min(current, achieved)
            self.rate = max(self.floor, current * DECREASE)
        elif self.rate is not None:
            step = max(self.floor, self.peak * INCREASE_FRACTION)
            raised = self.rate + step
            self.rate = min(raised, self.ceiling) if self.ceiling is not None else raised
        return self.rate


@dataclass
class PacingStatus:
    """What ``show`` and the progress bar say about the throttle."""

    factor: float
    baseline_p90_ms: float
    limit_ms: float
    latency_p90_ms: float | None = None
    rate_bytes_s: float | None = None
    decreases: int = 0
    increases: int = 0
    paced_s: float = 0.0
    #: Seconds the source stayed over the limit while the copy already crawled at the
    #: floor: then the copy is not what slows the source, and slower would not help.
    over_at_floor_s: float = 0.0
    peak_bytes_s: float = 0.0
    history: list[tuple[float, float | None, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = data["history"][-20:]
        return data

    def summary(self) -> str:
        rate = "unpaced" if self.rate_bytes_s is None else \
            f"paced to {self.rate_bytes_s / 1e6:.1f} MB/s"
        latency = "" if self.latency_p90_ms is None else \
            f", source p90 {self.latency_p90_ms:.1f} ms (limit {self.limit_ms:.1f})"
        floor = "" if self.over_at_floor_s < FLOOR_WARNING_S else \
            f"; over the limit at the floor for {self.over_at_floor_s:.0f}s: not the copy's doing"
        return f"{rate}{latency}{floor}"


class LatencyThrottle:
    """A thread that probes the source and sets the copy's rate, until stopped.

    ``set_rate`` gets bytes per second for the whole copy, or None for no pace (it
    is called again every interval: a stream that restarted picks the rate up);
    ``done_bytes`` says how far the copy is; ``on_status`` hears every decision.
    """

    def __init__(self, probe: Callable[[], float], baseline: Baseline, factor: float,
                 set_rate: Callable[[float | None], None], done_bytes: Callable[[], int], *,
                 floor_bytes_s: float, ceiling_bytes_s: float | None = None,
                 on_status: Callable[[PacingStatus], None] = lambda status: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe
        self._set_rate = set_rate
        self._done_bytes = done_bytes
        self._on_status = on_status
        self._clock = clock
        self.limit_s = factor * baseline.p90_s
        self.aimd = Aimd(floor_bytes_s, ceiling_bytes_s)
        self.status = PacingStatus(factor, baseline.p90_s * 1e3, self.limit_s * 1e3,
                                   rate_bytes_s=self.aimd.rate)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-throttle", daemon=True)

    def __enter__(self) -> LatencyThrottle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        started = last = self._clock()
        last_bytes = self._done_bytes()
        samples: list[float] = []
        while not self._stop.wait(PROBE_EVERY_S):
            samples.append(self._timed_probe())
            now = self._clock()
            if now - last < DECIDE_EVERY_S:
                continue
            done = self._done_bytes()
            achieved = max(0, done - last_bytes) / (now - last)
            self._decide(percentile(samples, 0.9), achieved, now - last, now - started)
            samples, last, last_bytes = [], now, done

    def _timed_probe(self) -> float:
        try:
            return min(PROBE_TIMEOUT_S, self._probe())
        except Exception:  # any failure: the source is not answering
            log.debug("latency probe failed", exc_info=True)
            return PROBE_TIMEOUT_S

    def _decide(self, latency_s: float, achieved: float, interval_s: float,
                elapsed_s: float) -> None:
        before = self.aimd.rate
        rate = self.aimd.decide(latency_s, self.limit_s, achieved)
        status = self.status
        status.latency_p90_ms = latency_s * 1e3
        status.rate_bytes_s = rate
        status.peak_bytes_s = self.aimd.peak
        if rate is not None:
            status.paced_s += interval_s
        if latency_s > self.limit_s and before is not None and before <= self.aimd.floor:
            status.over_at_floor_s += interval_s
            if status.over_at_floor_s >= FLOOR_WARNING_S > status.over_at_floor_s - interval_s:
                log.warning("the source's latency stays over its limit (%.1f ms > %.1f ms) "
                            "with the copy at its floor rate: something else slows the "
                            "source, and a slower copy would only keep the snapshot longer",
                            latency_s * 1e3, self.limit_s * 1e3)
        if rate is not None and (before is None or rate < before):
            status.decreases += 1
            log.info("source p90 latency %.2f ms over %.2f ms: copy paced to %.1f MB/s",
                     latency_s * 1e3, self.limit_s * 1e3, rate / 1e6)
        elif before is not None and rate is not None and rate > before:
            status.increases += 1
        status.history.append((round(elapsed_s, 1), None if rate is None else round(rate),
                               round(latency_s * 1e3, 3)))
        del status.history[:-HISTORY_KEPT]
        try:
            self._set_rate(rate)
        except Exception:  # a pace not set now is set at the next interval
            log.warning("could not set the copy's rate", exc_info=True)
        try:
            self._on_status(status)
        except Exception:  # a report (a journal write) failing must not end the pacing
            log.warning("could not report the copy's pace", exc_info=True)

"""Small statistics, written out so the harness needs nothing beyond the standard library.

Medians summarize runs (robust to one run disturbed by a neighbour on a shared
machine); nearest-rank percentiles summarize latencies (a p99 is then always a latency
that some query really had, never an interpolation between two).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """'1G', '512M', '1.5G', '4GiB' -> bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (expected e.g. 512M, 1G, 4G)")
    number, unit = match.groups()
    value = int(float(number) * _UNITS[unit.upper()])
    if value <= 0:
        raise ValueError(f"a size must be positive: {text!r}")
    return value


def parse_sizes(text: str) -> list[int]:
    """'1G,4G' -> ascending, distinct byte counts."""
    sizes = sorted({parse_size(part) for part in text.split(",") if part.strip()})
    if not sizes:
        raise ValueError("no sizes given")
    return sizes


def size_label(value: float) -> str:
    """Bytes -> the short label used in tables and file names ('1G', '256M', '1.5G')."""
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if value >= scale:
            number = value / scale
            text = f"{number:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{value:.0f}B"


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None; None when there are none."""
    data = sorted(v for v in values if v is not None)
    if not data:
        return None
    middle = len(data) // 2
    if len(data) % 2:
        return data[middle]
    return (data[middle - 1] + data[middle]) / 2


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100]; None for no values."""
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    if not values:
        return None
    data = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(data)))
    return data[rank - 1]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def longest_stretch(samples: Sequence[tuple[float, T]], bad: Callable[[T], bool]) -> float:
    """Longest time, in seconds, a polled condition stayed bad.

    A stretch runs from its first bad sample to the first good sample after it (or to
    the last sample, if it never recovered): the true duration lies between that and
    that minus one polling interval, so this never under-reports a stall.
    """
    longest = 0.0
    began: float | None = None
    for when, value in samples:
        if bad(value):
            if began is None:
                began = when
        elif began is not None:
            longest = max(longest, when - began)
            began = None
    if began is not None and samples:
        longest = max(longest, samples[-1][0] - began)
    return longest


def rate_between(samples: Sequence[tuple[float, int]], start: float, end: float) -> float | None:
    """Increase per second of a counter between two instants, from (time, value) samples.

    Uses the last sample at or before ``start`` and the last at or before ``end``, so
    the rate covers the window exactly as far as the samples allow.
    """
    before = [s for s in samples if s[0] <= start]
    upto = [s for s in samples if s[0] <= end]
    if not before or not upto:
        return None
    (t0, v0), (t1, v1) = before[-1], upto[-1]
    if t1 <= t0:
        return None
    return (v1 - v0) / (t1 - t0)


def within(samples: Iterable[tuple[float, T]], start: float, end: float) -> list[T]:
    return [value for when, value in samples if start <= when <= end]

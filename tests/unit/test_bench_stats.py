"""The benchmark harness's statistics: sizes, medians, percentiles, stalls, rates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bench.hotcopy_bench import stats
from bench.hotcopy_bench.shard import (
    BYTES_PER_ROW,
    image_size_for,
    plan_step,
    refuse_without_space,
    space_needed,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("1G", 1024**3), ("4g", 4 * 1024**3), ("256M", 256 * 1024**2), ("1.5G", 1536 * 1024**2),
    ("4GiB", 4 * 1024**3), (" 512 MB ", 512 * 1024**2), ("2048", 2048)])
def test_parse_size(text: str, expected: int) -> None:
    assert stats.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "1X", "-1G", "0M", "one gig"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        stats.parse_size(text)


def test_parse_sizes_sorts_and_deduplicates() -> None:
    assert stats.parse_sizes("4G,1G,1024M") == [1024**3, 4 * 1024**3]
    with pytest.raises(ValueError, match="no sizes"):
        stats.parse_sizes(" , ")


@pytest.mark.parametrize(("value", "label"), [
    (1024**3, "1G"), (4 * 1024**3, "4G"), (256 * 1024**2, "256M"), (1536 * 1024**2, "1.5G"),
    (512, "512B")])
def test_size_label(value: int, label: str) -> None:
    assert stats.size_label(value) == label


def test_median_odd_even_and_missing_values() -> None:
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert stats.median([None, 5.0, None]) == 5.0
    assert stats.median([]) is None
    assert stats.median([None]) is None


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100..1, unsorted on purpose
    assert stats.percentile(values, 99) == 99.0
    assert stats.percentile(values, 100) == 100.0
    assert stats.percentile(values, 50) == 50.0
    assert stats.percentile([7.0], 99) == 7.0
    # with few values the p99 is the largest: never an interpolated value
    assert stats.percentile([1.0, 2.0, 30.0], 99) == 30.0
    assert stats.percentile([], 99) is None


@pytest.mark.parametrize("p", [0, -1, 100.1])
def test_percentile_rejects_out_of_range(p: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        stats.percentile([1.0], p)


def test_ratio() -> None:
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(None, 2.0) is None
    assert stats.ratio(3.0, None) is None
    assert stats.ratio(3.0, 0.0) is None


def test_longest_stretch_takes_the_longest_bad_run() -> None:
    samples = [(0.0, "Yes"), (1.0, "No"), (1.5, "No"), (2.0, "Yes"), (3.0, "No"),
               (3.2, "Yes"), (4.0, "Yes")]
    assert stats.longest_stretch(samples, lambda s: s != "Yes") == pytest.approx(1.0)


def test_longest_stretch_open_ended_and_clean() -> None:
    assert stats.longest_stretch([(0.0, "Yes"), (1.0, "No"), (4.0, "No")],
                                 lambda s: s != "Yes") == pytest.approx(3.0)
    assert stats.longest_stretch([(0.0, "Yes"), (1.0, "Yes")], lambda s: s != "Yes") == 0.0
    assert stats.longest_stretch([], lambda s: True) == 0.0


def test_rate_between_uses_the_samples_bounding_the_window() -> None:
    samples = [(0.0, 0), (1.0, 40), (2.0, 80), (3.0, 130), (4.0, 170)]
    assert stats.rate_between(samples, 1.0, 3.0) == pytest.approx(45.0)
    assert stats.rate_between(samples, 1.5, 3.5) == pytest.approx(45.0)
    assert stats.rate_between(samples, -1.0, 3.0) is None  # nothing before the window
    assert stats.rate_between(samples, 2.0, 2.5) is None   # no second sample


def test_within_keeps_the_window_inclusive() -> None:
    samples = [(0.0, "a"), (1.0, "b"), (2.0, "c"), (3.0, "d")]
    assert stats.within(samples, 1.0, 2.0) == ["b", "c"]


def test_plan_step_covers_the_requested_bytes() -> None:
    for size in (256 * 1024**2, 1024**3, 3 * 1024**3):
        tables, rows = plan_step(size)
        assert tables >= 1 and rows <= 1_000_000
        assert tables * rows * BYTES_PER_ROW == pytest.approx(size, rel=0.01)


def test_image_fits_three_copies_of_the_data() -> None:
    assert image_size_for(4 * 1024**3) >= 3 * 4 * 1024**3
    assert image_size_for(1024**2) == 4 * 1024**3


def test_a_run_the_disk_cannot_hold_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    workdir = tmp_path / "work" / "run-1"  # not made yet: the check looks at its parent
    free = shutil.disk_usage(tmp_path).free
    refuse_without_space(1024**2, workdir)  # 1 MiB of data fits anywhere this runs
    too_big = free  # five times the free space is needed for it
    with pytest.raises(SystemExit, match=r"not enough disk space .* GiB free under "):
        refuse_without_space(too_big, workdir)
    assert not workdir.exists()
    assert space_needed(8 * 1024**3) == 43 * 1024**3

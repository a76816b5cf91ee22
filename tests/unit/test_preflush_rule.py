"""When the pre-flush stops: the rule on its own, apart from any server.

The benchmark's pre-flush took 1,462 dirty pages to 115 in well under its 3 s and then
waited out the limit, since replication kept more than 64 pages dirty: 3 s of clone
for 0.3 s of the target's recovery. These hold the rule to what it must do instead.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hotcopy.workflows.preflush import (
    DONE_PAGES,
    LEFT_FRACTION,
    STALL_S,
    enough_pages,
    skip_reason,
    verdict,
)

pages = st.integers(min_value=0, max_value=10_000_000)
moments = st.floats(min_value=0, max_value=1e6, allow_nan=False)


def test_the_benchmark_case_is_done_once_ninety_percent_is_flushed() -> None:
    # 1,462 pages at the start, 115 left that replication keeps dirty: done, not a wait
    # for a 64 the cleaner can never reach while the source replicates.
    assert verdict(1462, 115, now=1.0, deadline=3.0, lowest_at=0.9) == "done"
    assert verdict(1462, 147, now=1.0, deadline=3.0, lowest_at=0.9) is None


def test_a_small_start_still_flushes_down_to_the_floor() -> None:
    assert enough_pages(100) == DONE_PAGES
    assert verdict(100, 65, now=0.5, deadline=3.0, lowest_at=0.4) is None
    assert verdict(100, 64, now=0.5, deadline=3.0, lowest_at=0.4) == "done"


def test_time_limit_and_stall_end_it_when_the_pages_do_not_fall() -> None:
    assert verdict(5000, 4000, now=3.0, deadline=3.0, lowest_at=2.9) == "timeout"
    assert verdict(5000, 4000, now=2.5, deadline=9.0, lowest_at=2.5 - STALL_S - 0.01) == \
        "stalled"


@given(before=pages, dirty=pages, now=moments, deadline=moments, lowest_at=moments)
def test_the_rule_stops_exactly_when_one_of_its_reasons_holds(before: int, dirty: int,
                                                              now: float, deadline: float,
                                                              lowest_at: float) -> None:
    why = verdict(before, dirty, now, deadline, lowest_at)
    enough = dirty <= max(DONE_PAGES, int(before * LEFT_FRACTION))
    assert (why == "done") == enough
    if not enough:
        assert (why == "timeout") == (now >= deadline)
        assert (why == "stalled") == (now < deadline and now - lowest_at > STALL_S)
        assert (why is None) == (now < deadline and now - lowest_at <= STALL_S)


@given(before=st.integers(min_value=DONE_PAGES + 1, max_value=10_000_000))
def test_done_never_leaves_more_than_a_tenth_or_the_floor(before: int) -> None:
    assert DONE_PAGES <= enough_pages(before) <= max(DONE_PAGES, before // 10)


def test_the_benchmark_case_is_skipped_for_its_small_checkpoint_age() -> None:
    # 1,238 dirty pages, 3.8 MB of redo since the checkpoint: the target answered 0.1-0.2 s
    # sooner after a pre-flush that cost the clone up to 1 s.
    reason = skip_reason(1238, 3_800_000, 8)
    assert reason is not None and "checkpoint age 3.8 MB" in reason
    assert skip_reason(1238, 3_800_000, 0) is None  # 0: flush whenever pages are dirty
    assert skip_reason(9014, 120_000_000, 8) is None  # the busy shard is flushed


@given(before=pages, age=st.none() | st.integers(min_value=0, max_value=10**12),
       min_age_mb=st.floats(min_value=0, max_value=1e5, allow_nan=False))
def test_a_skip_has_a_reason_exactly_when_there_is_little_to_gain(
        before: int, age: int | None, min_age_mb: float) -> None:
    little = before <= DONE_PAGES or (age is not None and age < min_age_mb * 1e6)
    reason = skip_reason(before, age, min_age_mb)
    assert (reason is not None) == little
    if reason and before > DONE_PAGES:
        assert "checkpoint age" in reason

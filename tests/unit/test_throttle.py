"""The latency throttle's rate decision (AIMD) and its statistics, apart from any host."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hotcopy.transfer.throttle import Aimd, Baseline, LatencyThrottle, percentile

MB = 1_000_000
rates = st.floats(min_value=0, max_value=2_000 * MB, allow_nan=False)
latencies = st.floats(min_value=0.0001, max_value=3, allow_nan=False)
rounds = st.lists(st.tuples(latencies, rates), min_size=1, max_size=60)


def test_percentile_is_an_observed_value_by_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 9.0, 8.0, 7.0, 6.0]
    assert percentile(values, 0.9) == 9.0
    assert percentile(values, 0.5) == 5.0
    assert percentile([0.3], 0.9) == 0.3


def test_baseline_measures_the_probe_and_survives_the_journal() -> None:
    answers = iter([i / 1000 for i in range(1, 11)])
    baseline = Baseline.measure(lambda: next(answers), samples=10, spacing_s=0)
    assert (baseline.median_s, baseline.p90_s, baseline.samples) == (0.0055, 0.009, 10)
    assert Baseline.from_dict(baseline.as_dict()) == baseline


def test_an_unpaced_copy_is_left_alone_while_the_source_is_within_its_limit() -> None:
    aimd = Aimd(floor=1 * MB)
    assert [aimd.decide(0.001, 0.002, 300 * MB) for _ in range(5)] == [None] * 5


def test_over_the_limit_the_rate_halves_from_what_the_copy_did() -> None:
    aimd = Aimd(floor=1 * MB)
    assert aimd.decide(0.010, 0.002, 300 * MB) == 150 * MB
    assert aimd.decide(0.010, 0.002, 150 * MB) == 75 * MB
    # A pace the copy did not reach is halved from what it reached.
    assert aimd.decide(0.010, 0.002, 20 * MB) == 10 * MB
    # Nothing moved in that second: halve the pace itself.
    assert aimd.decide(0.010, 0.002, 0) == 5 * MB


def test_within_the_limit_a_paced_copy_speeds_up_by_a_twentieth_of_its_peak() -> None:
    aimd = Aimd(floor=1 * MB)
    aimd.decide(0.010, 0.002, 200 * MB)
    assert aimd.rate == 100 * MB
    assert aimd.decide(0.001, 0.002, 100 * MB) == 110 * MB
    assert aimd.decide(0.001, 0.002, 110 * MB) == 120 * MB


def test_a_bandwidth_limit_is_where_the_pace_starts_and_its_ceiling() -> None:
    aimd = Aimd(floor=1 * MB, ceiling=50 * MB)
    assert aimd.rate == 50 * MB
    assert aimd.decide(0.001, 0.002, 50 * MB) == 50 * MB
    assert aimd.decide(0.010, 0.002, 50 * MB) == 25 * MB


@given(rounds, st.floats(min_value=0.1 * MB, max_value=10 * MB),
       st.one_of(st.none(), st.floats(min_value=10 * MB, max_value=1_000 * MB)))
def test_the_pace_stays_between_floor_and_ceiling_and_reacts_in_the_right_direction(
        history: list[tuple[float, float]], floor: float, ceiling: float | None) -> None:
    limit = 0.05
    aimd = Aimd(floor=floor, ceiling=ceiling)
    for latency, achieved in history:
        before = aimd.rate
        rate = aimd.decide(latency, limit, achieved)
        if rate is None:
            assert before is None and ceiling is None and latency <= limit
            continue
        assert rate >= floor
        if ceiling is not None:
            assert rate <= max(ceiling, floor)
        if latency > limit:
            # Never faster than before, and at most half of what the copy did or was allowed.
            assert before is None or rate <= max(before, floor)
            bound = before if before is not None else achieved
            if achieved > 0:
                bound = min(bound, achieved)
            assert rate == max(floor, bound / 2)
        elif before is not None:
            assert rate >= before


def test_a_source_still_slow_with_the_copy_at_its_floor_is_called_not_the_copys_doing() -> None:
    rates: list[float | None] = []
    throttle = LatencyThrottle(lambda: 0.001, Baseline(0.001, 0.001, 30), 1.5, rates.append,
                               lambda: 0, floor_bytes_s=1 * MB)
    for _ in range(8):  # 100 ms against a 1.5 ms limit, every second: halve to the floor
        throttle._decide(0.100, 100 * MB, 1.0, 0.0)
    status = throttle.status
    assert rates[-1] == 1 * MB and status.decreases == 7
    assert 0 < status.over_at_floor_s < 10 and "not the copy's doing" not in status.summary()
    for _ in range(10):
        throttle._decide(0.100, 1 * MB, 1.0, 0.0)
    assert status.over_at_floor_s >= 10 and "not the copy's doing" in status.summary()
    throttle._decide(0.001, 1 * MB, 1.0, 0.0)  # within the limit again: the pace goes up
    assert rates[-1] is not None and rates[-1] > 1 * MB and status.increases == 1

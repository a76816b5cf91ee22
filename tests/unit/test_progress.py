"""What the operator reads: durations, sizes, and plain progress lines without a terminal."""

from __future__ import annotations

import io

import pytest

from hotcopy.progress import PlainReporter, human_bytes, human_duration, progress_text


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0154, "15 ms"), (0.9994, "999 ms"), (15.8697, "15.9 s"), (59.94, "59.9 s"),
    (252, "4 min 12 s"), (3599.4, "59 min 59 s"), (7500, "2 h 05 min")])
def test_durations_are_humanized(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


@pytest.mark.parametrize(("count", "text"), [
    (999, "999 B"), (80_700_000, "80.7 MB"), (1_500_000_000, "1.5 GB"), (2e13, "20.0 TB")])
def test_sizes_are_decimal(count: float, text: str) -> None:
    assert human_bytes(count) == text


def test_progress_text_has_bytes_percent_rate_and_eta() -> None:
    text = progress_text(1_000_000_000, 4_000_000_000, 100_000_000)
    assert text == "1.0 GB of 4.0 GB (25%), 100.0 MB/s, ETA 30.0 s"
    assert progress_text(5, None, None) == "5 B"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_interval_first_and_last_always() -> None:
    out, clock = io.StringIO(), Clock()
    reporter = PlainReporter(out, interval_s=30, clock=clock)
    reporter.step_started("pull", "copy the snapshot to the target")
    total = 100_000_000
    for second in range(0, 101):  # one reading a second, 1 MB/s
        clock.now = 1000.0 + second
        reporter.progress(min(second * 1_000_000, total), total, None)
    clock.now += 1
    reporter.progress(total, total, None)  # a repeated 100 % is not written twice
    lines = [line.split(" ", 2)[2] for line in out.getvalue().splitlines()]
    assert lines[0] == "step pull: copy the snapshot to the target"
    assert lines[1:] == [
        "pull: 0 B of 100.0 MB (0%)",
        "pull: 30.0 MB of 100.0 MB (30%), 1.0 MB/s, ETA 1 min 10 s",
        "pull: 60.0 MB of 100.0 MB (60%), 1.0 MB/s, ETA 40.0 s",
        "pull: 90.0 MB of 100.0 MB (90%), 1.0 MB/s, ETA 10.0 s",
        "pull: 100.0 MB of 100.0 MB (100%), 1.0 MB/s",
    ]


def test_plain_warning_is_one_clean_line() -> None:
    out = io.StringIO()
    PlainReporter(out).warning("replica2 is not crash-safe")
    assert out.getvalue().endswith(" warning: replica2 is not crash-safe\n")


def test_a_signal_is_acknowledged_before_the_handler_underneath_runs() -> None:
    import signal

    from hotcopy.progress import acknowledge_signals

    out = io.StringIO()
    reporter = PlainReporter(out)
    reporter.step_started("pull", "copy the snapshot to the target")
    seen_by_handler: list[str] = []

    def underneath(signum: int, frame: object) -> None:
        seen_by_handler.append(out.getvalue())
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, underneath)
    try:
        with pytest.raises(KeyboardInterrupt), acknowledge_signals(reporter):
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is underneath  # put back on the way out
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(seen_by_handler) == 1
    assert ("warning: SIGINT received: stopping the current step (pull) safely, then "
            "rolling back every change of this job") in seen_by_handler[0]


def test_progress_recorder_writes_the_first_and_last_reading_and_little_between() -> None:
    from typing import Any

    from hotcopy.workflows.report import ProgressRecorder

    written: list[dict[str, Any]] = []
    record = ProgressRecorder(lambda **items: written.append(items), interval_s=3600)
    for done in range(0, 101, 10):
        record(done, 100)
    assert [(w["progress_bytes"], w["progress_total"]) for w in written] == [(0, 100), (100, 100)]
    assert all(isinstance(w["progress_at"], float) for w in written)

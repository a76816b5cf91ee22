"""Review finding 12: a stalled stream's watchdog stops that stream only, which alone is retried.

Real processes on this host through the real LocalExecutor and the real kill script (the
transfer's environment markers): stream 0 reports progress for a few seconds and ends;
stream 1 goes silent on its first attempt. Before the fix the watchdog's kill carried
the job's marker, shared by both: stream 0 died too and the whole transfer failed.
"""

from __future__ import annotations

from pathlib import Path

from hotcopy.hosts import LocalExecutor
from hotcopy.transfer.base import TransferRequest
from hotcopy.transfer.rsyncd import run_clients

PROGRESS = "echo '      1,000  10%    1.00MB/s    0:00:01'"
STATS = "echo 'Total bytes received: 10'; echo 'Literal data: 10'"

STEADY = f"""echo start >> "$1"; i=0
while [ $i -lt 30 ]; do {PROGRESS}; sleep 0.2; i=$((i+1)); done; {STATS}; echo done >> "$1" """
STALLS_ONCE = f"""echo start >> "$1"
if [ -e "$1.again" ]; then {PROGRESS}; {STATS}; echo done >> "$1"; exit 0; fi
: > "$1.again"; {PROGRESS}; exec sleep 600"""


def request(job_id: str) -> TransferRequest:
    return TransferRequest(job_id=job_id, source="a", target="b", source_address="127.0.0.1",
                           target_address="127.0.0.1", source_path="/x", destination="/y",
                           excludes=[], expected_bytes=None, bwlimit_kbps=None,
                           timeout_s=120, retries=2)


def test_only_the_stalled_stream_is_stopped_and_retried(tmp_path: Path) -> None:
    logs = [tmp_path / "stream-0.log", tmp_path / "stream-1.log"]
    commands = [["sh", "-c", STEADY, "steady", str(logs[0])],
                ["sh", "-c", STALLS_ONCE, "stalls", str(logs[1])]]
    result = run_clients(LocalExecutor(), request(f"review-stall-{tmp_path.name}"), commands,
                         lambda done, total, rate: None, stall_timeout_s=2)
    assert logs[0].read_text().split() == ["start", "done"]  # never stopped, never retried
    assert logs[1].read_text().split() == ["start", "start", "done"]
    assert result.attempts == 2

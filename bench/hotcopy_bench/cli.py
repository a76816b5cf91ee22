"""``scripts/bench [--sizes 1G,4G] [--runs 5] [--quick] [--transfer M,...] [--journal J,...]``.

Needs root (the sandbox loop-mounts btrfs images; the page cache is dropped between
runs). Writes bench/results/results.md, results.json and time_vs_size.png; raw logs
of every run stay in the work directory (bench/work/ by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from bench.hotcopy_bench import report, stats
from bench.hotcopy_bench.runner import Harness, Options
from bench.hotcopy_bench.shard import refuse_without_space

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
PIPELINE_CHOICES = ("baseline", "hotcopy", "hotcopy_nopreflush", "mariabackup", "floor",
                    "method", "hotcopy_etcd", "hotcopy_verified", "hotcopy_throttled",
                    "hotcopy_delta")
JOURNAL_CHOICES = ("sqlite", "etcd")
REQUIRED_TOOLS = ("sysbench", "mariabackup", "mbstream", "tar", "rsync", "mkfs.btrfs")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help="data sizes, ascending (default 1G,4G; quick: 256M)")
    parser.add_argument("--runs", type=int, help="runs per pipeline and size (default 5; "
                        "quick: 2)")
    parser.add_argument("--method-runs", type=int,
                        help="runs of each extra transfer method (default: --runs)")
    parser.add_argument("--method-sizes", default="smallest",
                        help="sizes at which the extra transfer methods run: smallest, all, "
                        "or a list like 1G (default smallest: a throughput needs no 4 GB, "
                        "and the slowest method would dominate the run time)")
    parser.add_argument("--transfer", help="transfer methods to measure besides the default "
                        "(comma list; default: every method in src/hotcopy/transfer/)")
    parser.add_argument("--journal", default="sqlite",
                        help="journals to clone with (comma list of sqlite, etcd; default "
                        "sqlite). etcd starts a 3-member etcd on loopback and adds the "
                        "pipeline hotcopy_etcd, interleaved with hotcopy (SQLite)")
    parser.add_argument("--latency-factor", type=float, default=1.5,
                        help="transfer.max_source_latency_factor of the pipeline "
                        "hotcopy_throttled, the clone paced by the source's latency "
                        "(default 1.5, the issue's goal for the read p99)")
    parser.add_argument("--quick", action="store_true",
                        help="small data and few runs, to check the harness itself")
    parser.add_argument("--write-rate", type=int, default=40,
                        help="master transactions per second (default 40)")
    parser.add_argument("--read-rate", type=float, default=200,
                        help="point selects per second on the source (default 200)")
    parser.add_argument("--baseline-s", type=float,
                        help="length of each no-clone window (default 20; quick: 8)")
    parser.add_argument("--skip", default="", help=f"pipelines to leave out: "
                        f"{','.join(PIPELINE_CHOICES)}")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "work",
                        help="where the sandbox and raw logs go (default bench/work)")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results",
                        help="where results.md/json/png go (default bench/results)")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox up at the end")
    parser.add_argument("--report-only", type=Path, metavar="RESULTS_JSON",
                        help="re-render results.md and the plot from a results.json")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    sizes = stats.parse_sizes(args.sizes or ("256M" if args.quick else "1G,4G"))
    runs = args.runs or (2 if args.quick else 5)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(PIPELINE_CHOICES)
    if unknown:
        raise SystemExit(f"--skip: unknown pipeline(s) {', '.join(sorted(unknown))}")
    transfers = None if args.transfer is None else [
        t.strip() for t in args.transfer.split(",") if t.strip()]
    journals = parse_journals(args.journal)
    run_dir = args.workdir / time.strftime("run-%Y%m%d-%H%M%S")
    return Options(sizes=sizes, runs=runs, method_runs=args.method_runs or runs,
                   method_sizes=method_sizes(args.method_sizes, sizes),
                   transfers=transfers, write_rate=args.write_rate, read_rate=args.read_rate,
                   baseline_s=args.baseline_s or (8 if args.quick else 20),
                   workdir=run_dir, quick=args.quick, keep=args.keep, skip=skip,
                   journals=journals, latency_factor=_latency_factor(args.latency_factor))


def _latency_factor(value: float) -> float:
    if not 1 < value <= 100:  # what transfer.max_source_latency_factor accepts
        raise SystemExit(f"--latency-factor: {value} is not in (1, 100]")
    return value


def parse_journals(text: str) -> list[str]:
    """sqlite is always measured (it is the "hotcopy" pipeline every target is judged
    on); etcd is measured beside it, so the ratio compares runs under the same load."""
    journals = list(dict.fromkeys(j.strip() for j in text.split(",") if j.strip()))
    unknown = [j for j in journals if j not in JOURNAL_CHOICES]
    if unknown:
        raise SystemExit(f"--journal: unknown journal(s) {', '.join(unknown)} "
                         f"(choose from {', '.join(JOURNAL_CHOICES)})")
    if "sqlite" not in journals:
        raise SystemExit("--journal: sqlite must be among them (the etcd figures are "
                         "reported against it)")
    return journals


def method_sizes(text: str, sizes: list[int]) -> list[int]:
    if text == "smallest":
        return sizes[:1]
    if text == "all":
        return list(sizes)
    chosen = stats.parse_sizes(text)
    unknown = [stats.size_label(s) for s in chosen if s not in sizes]
    if unknown:
        raise SystemExit(f"--method-sizes: {', '.join(unknown)} not among --sizes")
    return chosen


def write_results(doc: dict[str, object], results: Path) -> None:
    from bench.hotcopy_bench import plot

    results.mkdir(parents=True, exist_ok=True)
    (results / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (results / "results.md").write_text(report.render(doc))
    plot.write(doc, results / "time_vs_size.png")
    print(f"results: {results / 'results.md'}, {results / 'time_vs_size.png'}")


def _preflight(journals: list[str]) -> None:
    if os.geteuid() != 0:
        raise SystemExit("scripts/bench needs root (sandbox loop mounts, drop_caches)")
    tools = [*REQUIRED_TOOLS, *(["etcd"] if "etcd" in journals else [])]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)} (run scripts/bootstrap.sh)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("matplotlib is missing: .venv/bin/pip install -e '.[bench]'") from None


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C: a running clone is rolled back, the sandbox taken down."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.report_only:
        write_results(json.loads(args.report_only.read_text()), args.results)
        return 0
    options = options_from(args)
    _preflight(options.journals)
    refuse_without_space(max(options.sizes), options.workdir)
    options.workdir.mkdir(parents=True)
    options.workdir.chmod(0o755)  # mariadbd runs as mysql and must traverse it
    doc = Harness(options, REPO).run()
    (options.workdir / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    write_results(doc, args.results)
    failed = [r for r in doc["records"] if not r["ok"] and not r.get("unsupported")]
    if failed:
        print(f"{len(failed)} run(s) failed; see 'Failed runs' in results.md", file=sys.stderr)
    return 1 if failed else 0

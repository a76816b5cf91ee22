"""``scripts/bench --journal sqlite,etcd``: the comparison, its verdicts, its rendering,
the etcd config it writes and the option's parsing (no servers, no etcd)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bench.hotcopy_bench import aggregate, cli, report
from bench.hotcopy_bench.shard import with_etcd_journal

from hotcopy import config as config_module

MIB = 1024**2


def _run(pipeline: str, run: int, e2e: float, lock: float, paused: float,
         ok: bool = True) -> dict[str, Any]:
    figures = ({"start": 0.0, "end": e2e, "e2e_s": e2e, "source_lock_ms": lock,
                "source_replication_paused_ms": paused, "steps_ms": {"pull": 100.0}}
               if ok else {})
    return {"size": 256 * MIB, "pipeline": pipeline, "run": run, "ok": ok,
            "figures": figures, "impact": {}, "error": None if ok else "etcd gone",
            "unsupported": False}


def _doc(etcd_locks: tuple[float, float, float] = (6.0, 7.0, 8.0),
         etcd_paused: tuple[float, float, float] = (310.0, 320.0, 330.0)) -> dict[str, Any]:
    records = []
    for run, (e2e, lock, paused) in enumerate(((10.0, 5.0, 300.0), (11.0, 6.0, 310.0),
                                                (12.0, 7.0, 320.0)), start=1):
        records.append(_run("hotcopy", run, e2e, lock, paused))
        records.append(_run("hotcopy_etcd", run, e2e + 1.5, etcd_locks[run - 1],
                            etcd_paused[run - 1]))
    records.append(_run("hotcopy_etcd", 4, 0, 0, 0, ok=False))
    return {"records": records, "etcd": {"members": 3, "endpoints": []},
            "sizes": {str(256 * MIB): {"label": "256M", "ship_bytes": 3e8, "ship_files": 90}},
            "options": {"runs": 3, "method_runs": 3, "write_rate": 40, "read_rate": 200.0,
                        "baseline_s": 8}, "finished": 0}


def test_comparison_takes_medians_and_the_ratio_to_sqlite() -> None:
    rows = aggregate.journal_comparison(aggregate.group(_doc()))
    by = {r.journal: r for r in rows}
    assert [r.journal for r in rows] == ["sqlite", "etcd"]
    assert (by["sqlite"].e2e_s, by["etcd"].e2e_s) == (11.0, 12.5)
    assert by["etcd"].e2e_vs_sqlite == pytest.approx(12.5 / 11.0)
    assert by["sqlite"].e2e_vs_sqlite == pytest.approx(1.0)
    assert (by["etcd"].ok, by["etcd"].failed) == (3, 1)
    assert (by["etcd"].source_lock_ms, by["etcd"].source_replication_paused_ms) == (7.0, 320.0)


def test_no_comparison_without_the_etcd_pipeline() -> None:
    doc = _doc()
    doc["records"] = [r for r in doc["records"] if r["pipeline"] == "hotcopy"]
    groups = aggregate.group(doc)
    assert aggregate.journal_comparison(groups) == []
    assert aggregate.journal_targets(groups) == []
    assert "Journal: etcd" not in report.render(doc)


def _journal_verdicts(doc: dict[str, Any]) -> dict[str, bool | None]:
    return {v.target: v.met for v in aggregate.targets(aggregate.group(doc))
            if "etcd journal" in v.target}


def test_lock_and_pause_as_today_is_met_within_the_noise_bound() -> None:
    assert _journal_verdicts(_doc()) == {
        "source_lock_ms with the etcd journal as with SQLite": True,
        "source_replication_paused_ms with the etcd journal as with SQLite": True}


def test_a_longer_lock_or_pause_with_etcd_is_missed() -> None:
    # SQLite's medians: lock 6 ms, pause 310 ms; bound max(+50%, +10 ms / +100 ms).
    verdicts = _journal_verdicts(_doc(etcd_locks=(16.5, 17.0, 18.0),
                                      etcd_paused=(470.0, 480.0, 490.0)))
    assert verdicts == {
        "source_lock_ms with the etcd journal as with SQLite": False,
        "source_replication_paused_ms with the etcd journal as with SQLite": False}
    at_bound = _journal_verdicts(_doc(etcd_locks=(15.0, 16.0, 17.0),
                                      etcd_paused=(460.0, 465.0, 470.0)))
    assert all(at_bound.values())


def test_results_md_has_the_journal_table() -> None:
    text = report.render(_doc())
    section = text.split("## Journal: etcd against SQLite", 1)[1].split("\n## ", 1)[0]
    assert "3 members" in section
    assert "| 256M | sqlite | 3 | 11.0 | 1.000 | 6.0 | 310 |" in section
    assert "| 256M | etcd | 3 (1 failed) | 12.5 | 1.136 | 7.0 | 320 |" in section
    assert "hotcopy (pre-flush on), etcd journal" in text  # in the per-size summary too


def test_etcd_config_replaces_the_sqlite_journal(tmp_path: Path) -> None:
    (tmp_path / "admin.cnf").write_text("[client]\nuser=root\npassword=x\n")
    (tmp_path / "admin.cnf").chmod(0o600)
    sandbox_text = (f'[shard]\nname = "sandbox"\n\n[mysql]\noption_file = '
                    f'"{tmp_path / "admin.cnf"}"\n\n[journal]\npath = "/x/journal.sqlite"\n'
                    f'\n[servers.a]\nhost = "127.0.0.1"\ndatadir = "{tmp_path}/a"\n'
                    f'defaults_file = "{tmp_path}/a.cnf"\n')
    text = with_etcd_journal(sandbox_text, ["http://127.0.0.1:1", "http://127.0.0.1:2"])
    assert "journal.sqlite" not in text
    path = tmp_path / "etcd.toml"
    path.write_text(text)
    journal = config_module.load(path).journal
    assert journal.backend == "etcd"
    assert journal.endpoints == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert journal.prefix == "/bench"
    with pytest.raises(ValueError, match="no \\[journal\\] path"):
        with_etcd_journal('[shard]\nname = "x"\n', ["http://127.0.0.1:1"])


def test_journal_option() -> None:
    assert cli.parse_journals("sqlite, etcd,etcd") == ["sqlite", "etcd"]
    assert cli.parse_journals("sqlite") == ["sqlite"]
    with pytest.raises(SystemExit, match="unknown journal"):
        cli.parse_journals("sqlite,zookeeper")
    with pytest.raises(SystemExit, match="sqlite must be among them"):
        cli.parse_journals("etcd")
    options = cli.options_from(cli.parse_args(["--quick", "--journal", "sqlite,etcd"]))
    assert options.journals == ["sqlite", "etcd"]

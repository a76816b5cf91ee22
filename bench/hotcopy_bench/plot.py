"""time_vs_size.png: end-to-end time against data size, one line per pipeline.

matplotlib comes from the optional ``bench`` dependency group (pip install -e .[bench]);
it is imported lazily so the rest of the harness, and its tests, do not need it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.hotcopy_bench.aggregate import VERIFIED_PIPELINE, group
from bench.hotcopy_bench.report import pipeline_name

STYLE = {"hotcopy": ("o", "-"), "hotcopy_nopreflush": ("o", "--"),
         VERIFIED_PIPELINE: ("o", ":"), "mariabackup": ("s", "-"), "floor": ("^", ":")}


def _timed(pipeline: str) -> str:
    """The figure a pipeline's line shows: to a caught-up target, or to a verified one."""
    return "verified_s" if pipeline == VERIFIED_PIPELINE else "e2e_s"


def series(doc: dict[str, Any]) -> dict[str, list[tuple[float, float, float, float]]]:
    """pipeline -> [(GB shipped, median s, min s, max s)] over sizes (pure: unit-tested)."""
    shipped = {int(k): v["ship_bytes"] / 1e9 for k, v in doc.get("sizes", {}).items()}
    runs: dict[tuple[str, int], list[float]] = {}
    for record in doc.get("records", []):
        key = _timed(record["pipeline"])
        if record["ok"] and record["pipeline"] != "baseline" and \
                record["figures"].get(key) is not None:
            runs.setdefault((record["pipeline"], int(record["size"])), []).append(
                float(record["figures"][key]))
    groups = group(doc)
    out: dict[str, list[tuple[float, float, float, float]]] = {}
    for (pipeline, size), values in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        med = groups[size][pipeline].get(_timed(pipeline))
        if med is None or size not in shipped:
            continue
        out.setdefault(pipeline, []).append((shipped[size], med, min(values), max(values)))
    return out


def write(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    lines = series(doc)
    order = ["hotcopy", "hotcopy_nopreflush", VERIFIED_PIPELINE,
             *sorted(p for p in lines if ":" in p), "mariabackup", "floor"]
    for pipeline in [p for p in order if p in lines]:
        points = lines[pipeline]
        marker, line = STYLE.get(pipeline, ("D", "-."))
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        low = [p[1] - p[2] for p in points]
        high = [p[3] - p[1] for p in points]
        ax.errorbar(xs, ys, yerr=[low, high], marker=marker, linestyle=line, capsize=3,
                    label=pipeline_name(pipeline)
                    + (" (to verified)" if pipeline == VERIFIED_PIPELINE else ""))
    floor = lines.get("floor")
    if floor:
        ax.plot([p[0] for p in floor], [p[1] * 1.25 for p in floor], color="grey",
                linestyle=(0, (1, 3)), label="target: 1.25 x floor")
    machine = doc.get("machine", {})
    version = re.search(r"\d+\.\d+\.\d+-MariaDB", str(machine.get("mariadb", "")))
    ax.set_xlabel("data shipped (GB)")
    ax.set_ylabel("end-to-end time (s), median; bars: min-max")
    ax.set_title(f"Re-seeding a replica under write load ({machine.get('nproc')} CPUs"
                 f"{', ' + version.group(0) if version else ''})")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

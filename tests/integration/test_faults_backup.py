"""SIGKILL at every step boundary of the backup pipeline (no snapshot: mariabackup
streamed to the target), then ``hotcopy rollback`` from a fresh process; and
``hotcopy resume`` at representative boundaries (before the stream, mid-pipeline,
after the prepare, the target side after the swap).

The same judgements as tests/integration/test_faults.py, on a plain-directory shard of
this module's own, plus: no token, option-file copy or listener of the job left.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hotcopy.workflows.clone import BACKUP_STEPS

from ..fault_points import kill_points
from ..real_parts import missing_tools, needs
from .conftest import own_sandbox
from .test_backup_fallback import job_files, roll_back_unfinished
from .test_faults import (
    Shard,
    assert_cloned,
    assert_rolled_back,
    boundary_id,
    killed_clone,
    marked_shard,
    module_shard,
    run_json,
)

pytestmark = needs(missing_tools(("mariabackup", "mbstream"), "backup pipeline tests"))

#: Each distinct crash state once (kill-before:Y is kill-after:X; see fault_points.py).
BOUNDARIES = kill_points([step.name for step in BACKUP_STEPS])
RESUMED = [("after", "listen"), ("after", "backup_stream"), ("after", "prepare_backup"),
           ("after", "swap_datadir"), ("after", "verify")]


@pytest.fixture(scope="module")
def shard() -> Iterator[Shard]:
    with own_sandbox(filesystem="plain", before_down=roll_back_unfinished) as info:
        yield from module_shard(info)


@pytest.fixture
def clean(shard: Shard) -> Iterator[Shard]:
    yield from marked_shard(shard)


@pytest.mark.parametrize("boundary", BOUNDARIES, ids=boundary_id)
def test_backup_sigkill_at_boundary_then_rollback(clean: Shard,
                                                  boundary: tuple[str, str]) -> None:
    when, step = boundary
    job_id = killed_clone(clean, f"kill-{when}:{step}")
    assert clean.journal().get_job(job_id).params["pipeline"] == "backup"
    back, report = run_json("rollback", "--config", str(clean.info.config_path), job_id,
                            "--json")
    if BOUNDARIES.index(boundary) >= BOUNDARIES.index(("after", "commit")):
        assert back.returncode == 2 and "committed" in back.stderr, back.stderr
        assert_cloned(clean, clean.report(job_id))
    else:
        assert back.returncode == 0, back.stderr[-3000:]
        assert report["state"] == "rolled-back"
        assert_rolled_back(clean, job_id)
    assert job_files(job_id) == [], "token, option-file copy or work files left"


@pytest.mark.parametrize("boundary", RESUMED, ids=boundary_id)
def test_backup_sigkill_then_resume_finishes(clean: Shard, boundary: tuple[str, str]) -> None:
    when, step = boundary
    job_id = killed_clone(clean, f"kill-{when}:{step}")
    resumed, report = run_json("resume", "--config", str(clean.info.config_path), job_id,
                               "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert report["job"] == job_id
    assert "backup_stream" in {s["name"] for s in report["steps"]}
    assert_cloned(clean, report)
    assert job_files(job_id) == []

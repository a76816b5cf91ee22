"""A control host installs hotcopy from a wheel, without the repository."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import hotcopy

REPO = Path(__file__).resolve().parents[2]


def test_wheel_installs_in_a_fresh_venv_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
                    str(REPO)], check=True, timeout=600, capture_output=True)
    wheels = list(dist.glob("hotcopy-*.whl"))
    assert [w.name for w in wheels] == [f"hotcopy-{hotcopy.__version__}-py3-none-any.whl"]
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "hotcopy/cli/__init__.py" in names and "hotcopy/py.typed" in names
    shipped = {n for n in names if n.endswith(".sh")}
    expected = {str(p.relative_to(REPO / "src")) for p in (REPO / "src").rglob("*.sh")}
    assert shipped == expected  # every shell program the package runs on hosts
    assert not any(n.startswith("tests/") for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheels[0])], check=True,
                   timeout=600, capture_output=True)
    # From outside the repository: what runs is the installed copy.
    version = subprocess.run([str(venv / "bin" / "hotcopy"), "--version"], cwd=tmp_path,
                             capture_output=True, text=True, check=True, timeout=60)
    assert version.stdout.strip() == f"hotcopy, version {hotcopy.__version__}"
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import hotcopy; print(hotcopy.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True, timeout=60)
    assert where.stdout.startswith(str(venv)), where.stdout

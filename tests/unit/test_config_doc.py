"""The config reference cannot drift from the config model."""

from __future__ import annotations

from pathlib import Path

from hotcopy.config_doc import EXPLAINED, explanation, keys, render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_the_committed_reference_is_what_the_model_generates() -> None:
    assert PAGE.read_text() == render(), (
        "docs/config.md is stale: run `python -m hotcopy.config_doc > docs/config.md`")


def test_every_key_says_what_it_does() -> None:
    assert [path for path, field in keys() if not explanation(path, field)] == []


def test_no_explanation_for_a_key_that_no_longer_exists() -> None:
    assert set(EXPLAINED) - {path for path, _ in keys()} == set()


def test_every_key_is_on_the_page_with_its_default() -> None:
    page = PAGE.read_text()
    for path, _ in keys():
        table, _, key = path.rpartition(".")
        section = page.split(f"## `[{table}]`", 1)[1].split("\n## ", 1)[0]
        assert f"| `{key}` |" in section, path
    assert "| `port_range` | [integer, integer] | [28700, 28799] |" in page
    assert "| `datadir` | string | **required** |" in page

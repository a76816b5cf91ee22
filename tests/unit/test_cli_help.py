"""The CLI explains itself: --version, an example in every command's --help, completion."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

import hotcopy
from hotcopy.cli import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


COMMANDS = list(_commands(cli))


def test_version_is_the_package_version() -> None:
    result = CliRunner().invoke(cli, ["--version"], prog_name="hotcopy")
    assert result.exit_code == 0
    assert result.output.strip() == f"hotcopy, version {hotcopy.__version__}"


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "hotcopy")
def test_every_command_has_an_example_in_its_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="hotcopy")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output, result.output
    example = result.output.split("Example:", 1)[1]
    assert f"hotcopy {' '.join(path)}".strip() in example, example


def test_bash_completion_script_and_answers() -> None:
    runner = CliRunner()
    script = runner.invoke(cli, [], prog_name="hotcopy",
                           env={"_HOTCOPY_COMPLETE": "bash_source"})
    assert script.exit_code == 0
    assert "complete -o nosort -F _hotcopy_completion hotcopy" in script.output
    answer = runner.invoke(cli, [], prog_name="hotcopy",
                           env={"_HOTCOPY_COMPLETE": "bash_complete",
                                "COMP_WORDS": "hotcopy clone --tr", "COMP_CWORD": "2"})
    assert answer.exit_code == 0
    assert "plain,--transfer" in answer.output.splitlines()

"""Review finding 7: a target that answers SQL while no pid is found is refused, not warned."""

from __future__ import annotations

from pathlib import Path

from hotcopy.sandbox import SandboxInfo

from .test_refusals import edited_config, refuse

SOURCE, TARGET = "replica1", "replica2"


def test_a_target_answering_sql_without_a_pid_file_is_refused(sandbox: SandboxInfo,
                                                               tmp_path: Path) -> None:
    """The defaults file names a pid file the live server never wrote (started otherwise)."""
    cnf = tmp_path / "replica2.cnf"
    cnf.write_text(sandbox.defaults_file(TARGET).read_text().replace(
        "\n[client]\n", f"pid-file = {tmp_path}/elsewhere.pid\n\n[client]\n", 1))
    config = edited_config(sandbox, tmp_path, {(f"servers.{TARGET}", "defaults_file"):
                                               f'"{cnf}"'})
    # Before the fix: a warning "not running; it will be re-seeded", and --yes swapped
    # the datadir of the live server.
    refuse(sandbox, SOURCE, TARGET, "no mysqld found through the pid file",
           f"{tmp_path}/elsewhere.pid", "answers SQL", config=config, modes=("--dry-run",),
           marker=False)

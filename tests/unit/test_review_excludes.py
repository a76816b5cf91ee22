"""Review (Low): custom replication state file names are never shipped."""

from __future__ import annotations

from hotcopy.transfer.base import STATIC_EXCLUDES, file_excludes, is_excluded

DATADIR = "/var/lib/mysql"


def test_custom_info_and_index_names_in_the_datadir_are_excluded() -> None:
    patterns = list(STATIC_EXCLUDES) + file_excludes(DATADIR, [
        "db1-master.state",            # master_info_file, relative to the datadir
        "/var/lib/mysql/db1-relay.state",  # relay_log_info_file, absolute
        "/var/lib/mysql/binlogs/db1.idx",  # log_bin_index, in a subdirectory
        "/srv/elsewhere/relay.idx",    # outside the datadir: never shipped anyway
        None, ""])
    for shipped_before in ("db1-master.state", "db1-relay.state", "binlogs/db1.idx"):
        assert is_excluded(shipped_before, patterns), shipped_before
    assert not is_excluded("ibdata1", patterns)
    assert not is_excluded("db/db1-master.state", patterns)  # anchored: only that file
    assert "/../srv/elsewhere/relay.idx" not in patterns and len(patterns) == \
        len(STATIC_EXCLUDES) + 3

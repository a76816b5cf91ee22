"""The promotion dialect and the pure decisions: who is master, which replica to promote."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotcopy.errors import RefusedError
from hotcopy.mysql import gtid
from hotcopy.mysql.flavor import promotion
from hotcopy.mysql.flavor.mariadb import MariaDB
from hotcopy.mysql.flavor.mysql import MySQL
from hotcopy.workflows.failover import choose
from hotcopy.workflows.topology import ServerView, find_master


def test_demote_to_slave_only_from_10_10() -> None:
    assert promotion.can_demote_to_slave(MariaDB((10, 10, 1)))
    assert promotion.can_demote_to_slave(MariaDB((11, 4, 2)))
    assert not promotion.can_demote_to_slave(MariaDB((10, 6, 18)))
    assert not promotion.can_demote_to_slave(MySQL((8, 0, 36)))


def test_replicate_from_passes_values_as_parameters() -> None:
    sql, args = promotion.replicate_from("10.0.0.2", 3306, "repl", "pw'x", demote=True)
    assert "MASTER_USE_GTID = slave_pos" in sql and sql.endswith("MASTER_DEMOTE_TO_SLAVE = 1")
    assert "pw'x" not in sql and args == ("10.0.0.2", 3306, "repl", "pw'x")
    plain, _ = promotion.replicate_from("h", 1, "u", "p")
    assert "DEMOTE" not in plain
    assert promotion.set_slave_pos("0-1-5") == ("SET GLOBAL gtid_slave_pos = %s", ("0-1-5",))


def test_mysql_is_refused_by_name() -> None:
    with pytest.raises(RefusedError, match="db3 runs mysql"):
        promotion.require_mariadb(MySQL((8, 4, 0)), "db3")


def _view(name: str, *, channel_of: str | None = None, read_only: bool = True,
          binlog_state: str = "", slave_pos: str = "") -> ServerView:
    view = ServerView(name, "h:1", reachable=True, read_only=read_only,
                      gtid_binlog_state=binlog_state, gtid_slave_pos=slave_pos)
    if channel_of:
        view.channels, view.replicates_from = 1, channel_of
    return view


def test_the_master_is_the_head_the_others_follow() -> None:
    servers = {"a": _view("a", read_only=False), "b": _view("b", channel_of="a"),
               "c": _view("c", channel_of="a")}
    assert find_master(servers) == "a"


def test_a_fenced_old_master_is_not_taken_for_the_master() -> None:
    servers = {"old": _view("old", read_only=True), "new": _view("new", read_only=False),
               "r": _view("r", channel_of="new")}
    assert find_master(servers) == "new"


def test_no_head_followed_and_all_read_only_is_no_master() -> None:
    servers = {"a": _view("a"), "b": _view("b")}
    assert find_master(servers) is None


def test_choose_takes_the_replica_with_everything() -> None:
    views = {"r1": _view("r1", binlog_state="0-1-120", slave_pos="0-1-120"),
             "r2": _view("r2", binlog_state="0-1-100", slave_pos="0-1-100"),
             "r3": _view("r3", binlog_state="0-1-120", slave_pos="0-1-120")}
    chosen, lacks = choose(views, None)
    assert chosen == "r1" and lacks == {"r2": "0-1-120"}
    assert choose(views, "r3")[0] == "r3"
    assert choose(views, "r2")[0] is None


def test_choose_refuses_incomparable_replicas_naming_what_each_lacks() -> None:
    views = {"r1": _view("r1", binlog_state="0-1-50,88-2-1"),
             "r2": _view("r2", binlog_state="0-1-50,89-3-1")}
    chosen, lacks = choose(views, None)
    assert chosen is None
    assert lacks == {"r1": "89-3-1", "r2": "88-2-1"}


@given(st.lists(st.integers(1, 1000), min_size=2, max_size=5))
def test_choose_promotes_a_replica_at_the_highest_position(seqs: list[int]) -> None:
    views = {f"r{i}": _view(f"r{i}", binlog_state=f"0-1-{n}", slave_pos=f"0-1-{n}")
             for i, n in enumerate(seqs)}
    chosen, _ = choose(views, None)
    assert chosen is not None
    top = gtid.Position.parse(views[chosen].gtid_slave_pos)
    assert all(top.covers(gtid.Position.parse(v.gtid_slave_pos)) for v in views.values())


def test_half_switched_over_the_writable_head_is_the_master() -> None:
    servers = {"old": _view("old", read_only=True), "new": _view("new", read_only=False),
               "r1": _view("r1", channel_of="old"), "r2": _view("r2", channel_of="old")}
    assert find_master(servers) == "new"

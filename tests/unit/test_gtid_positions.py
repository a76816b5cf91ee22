"""Picking the point both replicas can be stopped at, for the checksum comparison."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hotcopy.mysql.flavor.mariadb import MariaDB
from hotcopy.mysql.flavor.mysql import MySQL

MARIADB = MariaDB((10, 11, 9))


def test_mariadb_takes_the_highest_sequence_per_domain() -> None:
    assert MARIADB.furthest_gtid_position(["0-1-100,1-2-7", "0-1-120", "1-3-5,2-1-1"]) == \
        "0-1-120,1-2-7,2-1-1"


def test_mariadb_empty_positions() -> None:
    assert MARIADB.furthest_gtid_position(["", ""]) == ""
    assert MARIADB.furthest_gtid_position(["", "0-1-3"]) == "0-1-3"


@given(st.lists(st.dictionaries(st.integers(0, 5), st.integers(1, 10**9), min_size=1),
                min_size=1, max_size=5))
def test_mariadb_result_is_at_or_past_every_input(positions: list[dict[int, int]]) -> None:
    texts = [",".join(f"{d}-1-{n}" for d, n in p.items()) for p in positions]
    goal = {int(i.split("-")[0]): int(i.split("-")[2])
            for i in MARIADB.furthest_gtid_position(texts).split(",")}
    for position in positions:
        for domain, seq in position.items():
            assert goal[domain] >= seq
    assert MARIADB.furthest_gtid_position([MARIADB.furthest_gtid_position(texts)]) == \
        MARIADB.furthest_gtid_position(texts)


def test_mysql_joins_sets() -> None:
    mysql = MySQL((8, 0, 36))
    assert mysql.furthest_gtid_position(["uuid-a:1-5", "", "uuid-a:1-9,uuid-b:1-2"]) == \
        "uuid-a:1-5,uuid-a:1-9,uuid-b:1-2"

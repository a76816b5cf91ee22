"""MariaDB GTID lists: parsing round trips, per-domain order, errant transactions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotcopy.mysql.gtid import (
    Gtid,
    GtidError,
    History,
    Order,
    Position,
    compare,
    errant,
    parse_list,
)

gtids = st.builds(Gtid, st.integers(0, 2**32 - 1), st.integers(1, 2**32 - 1),
                  st.integers(1, 2**64 - 1))
positions = st.dictionaries(st.integers(0, 4), st.tuples(st.integers(1, 3), st.integers(1, 50)),
                            max_size=4).map(
    lambda d: Position({k: Gtid(k, s, n) for k, (s, n) in d.items()}))


def test_parse_reads_what_mariadb_prints() -> None:
    assert parse_list("0-1-100,1-2-7") == [Gtid(0, 1, 100), Gtid(1, 2, 7)]
    assert parse_list(" 0-1-5 ,\n") == [Gtid(0, 1, 5)]
    assert parse_list("") == parse_list(None) == []


@pytest.mark.parametrize("text", ["0-1", "a-1-2", "0-1-2-3", "0--1-2", "4294967296-1-1",
                                  "0-1-18446744073709551616"])
def test_parse_refuses_what_is_not_a_gtid(text: str) -> None:
    with pytest.raises(GtidError):
        parse_list(text)


def test_a_position_names_each_domain_once() -> None:
    with pytest.raises(GtidError, match="domain 0 twice"):
        Position.parse("0-1-5,0-2-6")


@given(st.lists(gtids, max_size=6, unique_by=lambda g: g.domain))
def test_position_text_round_trips(items: list[Gtid]) -> None:
    position = Position({g.domain: g for g in items})
    assert Position.parse(str(position)) == position


@given(positions, positions)
def test_compare_is_antisymmetric(a: Position, b: Position) -> None:
    mirrored = {Order.AHEAD: Order.BEHIND, Order.BEHIND: Order.AHEAD,
                Order.EQUAL: Order.EQUAL, Order.INCOMPARABLE: Order.INCOMPARABLE}
    assert compare(b, a) is mirrored[compare(a, b)]


@given(positions, positions)
def test_compare_agrees_with_covers(a: Position, b: Position) -> None:
    order = compare(a, b)
    if order in (Order.AHEAD, Order.EQUAL):
        assert a.covers(b)
        assert a.missing_from(b) == []
    if order is Order.BEHIND:
        assert b.covers(a) and not a.covers(b)
        assert a.missing_from(b)


@given(positions, positions)
def test_the_furthest_of_two_covers_both(a: Position, b: Position) -> None:
    furthest = Position.of([*a.by_domain.values(), *b.by_domain.values()])
    assert furthest.covers(a) and furthest.covers(b)
    assert compare(furthest, a) in (Order.AHEAD, Order.EQUAL, Order.INCOMPARABLE)


def test_same_sequence_from_two_servers_is_a_divergence() -> None:
    assert compare(Position.parse("0-1-10"), Position.parse("0-3-10")) is Order.INCOMPARABLE
    assert compare(Position.parse("0-1-10,1-1-5"), Position.parse("0-1-9,1-1-6")) is \
        Order.INCOMPARABLE
    assert compare(Position.parse("0-1-10"), Position.parse("0-2-9")) is Order.AHEAD


def test_errant_names_the_local_write_of_a_replica() -> None:
    master = History.parse("0-1-120,0-2-40")
    replica = parse_list("0-1-100,0-2-40") + parse_list("0-3-121,9-3-1")
    assert errant(replica, master) == [Gtid(0, 3, 121), Gtid(9, 3, 1)]


@given(st.lists(gtids, max_size=8), st.lists(gtids, max_size=4))
def test_errant_is_exactly_what_the_master_history_lacks(shared: list[Gtid],
                                                         extra: list[Gtid]) -> None:
    master = History.parse(",".join(map(str, shared)))
    found = errant([*shared, *extra], master)
    assert all(master.has(g) for g in shared)
    assert not any(g in found for g in shared)
    assert all(not master.has(g) for g in found)
    assert set(found) == {g for g in extra if not master.has(g)}


@given(st.lists(gtids, min_size=1, max_size=8))
def test_a_prefix_of_the_history_is_never_errant(items: list[Gtid]) -> None:
    master = History.parse(",".join(map(str, items)))
    behind = [Gtid(g.domain, g.server_id, max(1, g.seq - 1)) for g in items]
    assert errant(behind, master) == []

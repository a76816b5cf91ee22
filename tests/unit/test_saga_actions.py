"""The undo action registry: names must resolve the same way in every process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from hotcopy.errors import HotcopyError
from hotcopy.saga import UnknownUndoAction, lookup, registered, undo_action


@undo_action("test_actions.start_sql_thread", describe="start the SQL thread on {server}")
def start_sql_thread(context: Any, params: Mapping[str, Any]) -> None:
    context.append(("start", params["server"]))


def test_lookup_returns_the_registered_function_and_template() -> None:
    action = lookup("test_actions.start_sql_thread")
    assert action.name == "test_actions.start_sql_thread"
    assert action.fn is start_sql_thread
    calls: list[tuple[str, str]] = []
    action.fn(calls, {"server": "db1"})
    assert calls == [("start", "db1")]
    assert "test_actions.start_sql_thread" in registered()
    assert registered() == sorted(registered())


def test_describe_with_fills_params_and_tolerates_missing_or_odd_ones() -> None:
    action = lookup("test_actions.start_sql_thread")
    assert action.describe_with({"server": "db1"}) == "start the SQL thread on db1"
    assert action.describe_with({}) == "start the SQL thread on {server}"

    @undo_action("test_actions.odd_template", describe="restore {var.attr} to {value[3]}")
    def odd(context: Any, params: Mapping[str, Any]) -> None:
        """Never runs."""

    text = lookup("test_actions.odd_template").describe_with({"var": "x", "value": "ab"})
    assert text.startswith("restore {var.attr} to {value[3]}")


def test_registering_another_function_under_a_taken_name_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @undo_action("test_actions.start_sql_thread", describe="something else")
        def impostor(context: Any, params: Mapping[str, Any]) -> None:
            """Never runs."""

    assert lookup("test_actions.start_sql_thread").fn is start_sql_thread


def test_reregistering_the_same_function_is_fine() -> None:
    # A module imported twice creates new function objects with the same qualified
    # name; a factory reproduces that.
    def make() -> Any:
        def reimported(context: Any, params: Mapping[str, Any]) -> None:
            """Never runs."""

        return reimported

    first, second = make(), make()
    assert first is not second
    undo_action("test_actions.reimported", describe="x")(first)
    undo_action("test_actions.reimported", describe="x")(first)
    undo_action("test_actions.reimported", describe="x")(second)
    assert lookup("test_actions.reimported").fn is second


def test_unknown_action_says_which_and_that_its_module_was_not_imported() -> None:
    with pytest.raises(UnknownUndoAction) as caught:
        lookup("snapshot.btrfs.destroy_nothing")
    message = str(caught.value)
    assert "snapshot.btrfs.destroy_nothing" in message
    assert "not imported" in message
    assert isinstance(caught.value, HotcopyError)
    assert caught.value.name == "snapshot.btrfs.destroy_nothing"


def test_empty_name_is_refused() -> None:
    with pytest.raises(ValueError):
        undo_action(" ", describe="x")

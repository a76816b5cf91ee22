"""The free-space rule shared by the preflight, the transfer's guard and the agent."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hotcopy.space import MAX_RESERVE, TARGET_WRITE_ROOM, guard_reserve, space_needed

sizes = st.integers(min_value=0, max_value=2**44)
margins = st.floats(min_value=0, max_value=5, allow_nan=False)


@given(sizes, margins)
def test_a_clone_the_preflight_admits_never_trips_the_guard(data: int, margin: float) -> None:
    # After the whole copy has landed on exactly the space the preflight demanded, what is
    # left still covers the guard's reserve, by at least the reserve again.
    left_after_copy = space_needed(data, margin) - data
    assert left_after_copy >= 2 * guard_reserve(data, margin) or \
        guard_reserve(data, margin) == MAX_RESERVE


@given(sizes, margins)
def test_the_reserve_keeps_the_write_room_and_is_bounded(data: int, margin: float) -> None:
    assert TARGET_WRITE_ROOM <= guard_reserve(data, margin) <= MAX_RESERVE


def test_a_small_copy_still_asks_for_room_for_the_running_mysqld() -> None:
    # 81 MB (the sandbox) at the default 10 %: the margin alone would be 8 MB, which a
    # flushing InnoDB on btrfs used up; the floor asks for 128 MiB beyond the data.
    assert space_needed(81_000_000, 0.10) == 81_000_000 + 2 * TARGET_WRITE_ROOM
    assert space_needed(10**12, 0.10) == 10**12 + 10**11

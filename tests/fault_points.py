"""The step boundaries the fault matrices kill a controller at.

``kill-before:Y`` and ``kill-after:X``, with Y the step right after X, leave the same
journal and the same hosts: the runner writes and runs nothing between them (the unit
test test_fault_boundaries.py holds it to that). Each distinct crash state is therefore
``before`` the first step, or ``after`` one of the steps.
"""

from __future__ import annotations

from collections.abc import Sequence

Boundary = tuple[str, str]


def kill_points(step_names: Sequence[str]) -> list[Boundary]:
    """Every distinct crash state of a workflow, in order."""
    return [("before", step_names[0]), *(("after", name) for name in step_names)]

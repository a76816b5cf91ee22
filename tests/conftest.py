"""Session-wide test rules: a missing real part skips, or fails under CI (real_parts)."""

from __future__ import annotations

import pytest

from .real_parts import MARK, SWITCH, required, verdict


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARK}(reason): needs a real part; skipped without it, failed under "
                   f"CI=true or {SWITCH}=1")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Every missing part at once, so one run tells everything to install.
    reasons = dict.fromkeys(str(m.kwargs["reason"]) for m in item.iter_markers(MARK)
                            if m.kwargs.get("reason"))
    if reasons:
        verdict("; ".join(reasons))


def pytest_report_header(config: pytest.Config) -> str:
    if required():
        return f"real parts: required (CI=true or {SWITCH}=1): a missing one fails its tests"
    return "real parts: optional (a missing one skips its tests; CI=true makes it fail)"

"""Whether the running test failed, for fixtures that show process logs in their teardown.

tests/conftest.py keeps each phase's report on the item under `REPORTS`.
"""

from __future__ import annotations

import pytest

REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(REPORTS, {})
    return any(report.failed for report in reports.values())

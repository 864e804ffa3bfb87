"""The unit layer: pure code, no database, no server process; each test takes milliseconds.

A unit test that runs for seconds has hung (say, an expansion that lost its memoisation):
it fails after UNIT_TIMEOUT instead of the suite's much longer per-test timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent
UNIT_TIMEOUT = 10  # seconds


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if UNIT in item.path.parents:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT))

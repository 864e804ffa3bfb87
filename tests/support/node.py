"""Node packages a test needs, installed from their pinned lockfile the way the demo's
browser is: skipped without node and npm, except in CI (INVENTORY_REQUIRE_BROWSER=1),
where that fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def npm_installed(folder: Path, what: str) -> Path:
    """`folder` with its package-lock.json installed (npm ci); `what` names it for the
    skip. Returns node's path."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        reason = f"{what} needs node and npm (apt-get install nodejs npm)"
        if os.environ.get("INVENTORY_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    subprocess.run(
        [npm, "ci", "--prefix", str(folder), "--prefer-offline", "--no-audit", "--no-fund"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return Path(node)

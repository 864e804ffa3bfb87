"""Which service code a benchmark measures: this checkout, an exported commit, or a
snapshot of this checkout's src/; and checks that a PYTHONPATH imports what it should."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import inventory_graphql
from bench.harness import ROOT
from bench.harness.results import CodeVersion, SrcSnapshot


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout


def describe(ref: str) -> str:
    """`HASH subject` of a commit."""
    return git("log", "-1", "--format=%h %s", ref).strip()


def export_src(ref: str, into: Path) -> Path:
    """The ref's src/ directory, unpacked under `into`."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "src"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def snapshot_src(into: Path) -> SrcSnapshot:
    """This checkout's src/ as it is on disk, copied under `into`; what differs from HEAD."""
    shutil.copytree(
        ROOT / "src", into / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    diff = git("diff", "HEAD", "--", "src")
    untracked = git("ls-files", "--others", "--exclude-standard", "--", "src").split()
    return SrcSnapshot(
        commit=describe("HEAD"),
        src_changed=bool(diff or untracked),
        diff_stat=git("diff", "HEAD", "--stat", "--", "src").strip(),
        diff_sha256=hashlib.sha256(diff.encode()).hexdigest()[:16],
        untracked=untracked,
        diff=diff,
    )


def imported_from(pythonpath: str) -> str:
    """Where a process with this PYTHONPATH imports the service from."""
    done = subprocess.run(
        [sys.executable, "-c", "import inventory_graphql; print(inventory_graphql.__file__)"],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def expect_imports(paths: dict[str, str]) -> None:
    """Exit unless each version's PYTHONPATH imports the service from under it."""
    for version, path in paths.items():
        found = imported_from(path)
        if not found.startswith(path):
            raise SystemExit(f"{version} imports the service from {found}, not {path}")


def code_version() -> CodeVersion:
    """Which service code this process imported: the commit, and whether src/ had changes
    on top (None: imported from elsewhere, e.g. an exported commit on PYTHONPATH)."""
    imported = Path(inventory_graphql.__file__).parent
    from_checkout = imported == ROOT / "src" / "inventory_graphql"
    return CodeVersion(
        checkout_commit=git("rev-parse", "--short", "HEAD").strip(),
        src_changed=bool(git("status", "--porcelain", "--", "src").strip())
        if from_checkout
        else None,
        imported_from=str(imported),
    )

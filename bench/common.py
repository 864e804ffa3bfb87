"""Shared pieces of the benchmarks: a database, a server process, percentiles, output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil

from inventory_graphql.embedded_db import embedded_postgres
from inventory_graphql.testing.server import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """BENCH_DATABASE_URL's server, or a fresh embedded one (removed afterwards)."""
    if url := os.environ.get("BENCH_DATABASE_URL"):
        yield url
        return
    with (
        tempfile.TemporaryDirectory(prefix="inventory-bench-") as tmp,
        embedded_postgres(Path(tmp)) as url,
    ):
        yield url


@contextlib.contextmanager
def server_process(
    database_url: str, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[str]:
    """`inventory-graphql serve` in its own process; yields its base URL."""
    env = {"DATABASE_URL": database_url, **(extra_env or {})}
    with ServerProcess(env, args, inherit_output=True) as server:
        yield server.url


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path

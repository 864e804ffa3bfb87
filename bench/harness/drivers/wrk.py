"""wrk, with reserve.lua: one reserve document with variables per request; with buyer
tokens, each request as another buyer."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.harness.cpu import cpu_meter
from bench.harness.database import Products
from bench.harness.results import WrkResult

SCRIPT = Path(__file__).with_name("reserve.lua")


def wrk_threads(clients: int) -> int:
    return min(2, clients)


def wrk_command(
    base_url: str, products: Products, clients: int, seconds: int, tokens: Path | None = None
) -> list[str]:
    return [
        *("wrk", "-t", str(wrk_threads(clients)), "-c", str(clients), "-d", f"{seconds}s"),
        *("--timeout", "30s", "--latency", "-s", str(SCRIPT)),
        f"{base_url}/graphql",
        *("--", products.prefix, str(products.count)),
        *([str(tokens)] if tokens is not None else []),
    ]


def write_tokens(tokens: Sequence[str], threads: int, into: Path) -> Path:
    """The tokens dealt out to wrk's threads, one file each (PREFIX-1 .. PREFIX-threads):
    no two requests of a run share a token until every file has run out."""
    prefix = into / "tokens"
    for thread in range(threads):
        prefix.with_name(f"tokens-{thread + 1}").write_text("\n".join(tokens[thread::threads]))
    return prefix


async def run_wrk(
    base_url: str,
    products: Products,
    clients: int,
    seconds: int,
    pids: dict[str, int],
    tokens: Sequence[str] = (),
) -> tuple[WrkResult, dict[str, float]]:
    """wrk against the server at `base_url`; its result, and the CPU used by wrk and `pids`.
    With `tokens` (buyer tokens, minted beforehand so that wrk only reads them), every
    request carries the next one."""
    with tempfile.TemporaryDirectory(prefix="wrk-tokens-") as tmp:
        files = write_tokens(tokens, wrk_threads(clients), Path(tmp)) if tokens else None
        proc = await asyncio.create_subprocess_exec(
            *wrk_command(base_url, products, clients, seconds, files),
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

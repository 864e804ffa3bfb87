"""Server CPU per request, by kind of request, beside the HTTP and GraphQL floors (issue 17).

    python -m bench.cpu_per_request                      # this checkout, 3 rounds
    python -m bench.cpu_per_request --before 5007435     # and an earlier commit, side by side

Needs `pip install -e '.[test,bench]'` and `wrk` on PATH. Per round, every series at 16 and
64 connections, each point in a server process of its own (one process: `serve --workers
1`, coalesced, as a user starts it with one worker; the floors under plain uvicorn with
httptools), the order of the series rotating from round to round so a shared machine's
drift hits all alike:

- `starlette`: a plain Starlette JSON route (bench/harness/floors.py), the HTTP floor;
- `strawberry`: a bare Strawberry app with parser and validation caches, `{ ping }`;
- `typename`, `product`, `reserve`: this service (and, with --before, the earlier
  commit's, on a database its own migrations made): `{ __typename }`, `product(sku)` on
  one product, and a coalesced one-line `reserve` over 10,000 products
  (bench/harness/drivers/reserve.lua). Every request comes from another shopper
  (X-Forwarded-For), as behind a load balancer, so per-client limits see a crowd.

A point: 2 s of warm-up, then wrk for --seconds; the server process's CPU (user + system;
`serve`'s webhook delivery child is not counted) over that window divided by the answers.
Printed: answers/s and server CPU per request (medians over rounds), each service series
against the floors, and with --before the median of the per-round after/before ratios.
Saved to bench-results/cpu_per_request.json. Exit 1 if any answer was not a 200 (or, for
`reserve`, not a Reservation).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from secrets import token_hex

import asyncpg
import psutil

from bench.harness import ROOT
from bench.harness.database import migrated_by, postgres, seed
from bench.harness.session import raise_open_files_limit
from bench.harness.versions import describe, expect_imports, export_src, snapshot_src
from inventory_graphql.database import create_migrated_database
from inventory_graphql.testing.server import ServerProcess, free_port

DATABASE = "inventory_bench_cpu_per_request"
DRIVERS = ROOT / "bench" / "harness" / "drivers"
FLOORS = ("starlette", "strawberry")
SERVICE = ("typename", "product", "reserve")
SPREAD = 10_000  # products the reserve series spreads over (no stock runs out)
WARM_UP_SECONDS = 2
BODIES = {
    "starlette": {"query": "{ ping }"},
    "strawberry": {"query": "{ ping }"},
    "typename": {"query": "{ __typename }"},
    "product": {
        "query": "query Product($sku: String!) { product(sku: $sku) { sku available } }",
        "variables": {"sku": "cpr-product-0"},
    },
}


@dataclass(frozen=True)
class Point:
    series: str
    version: str  # "after", "before", or "floor"
    clients: int
    round: int
    answers_per_second: float
    server_us_per_request: float
    refused: int


def _server_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@contextmanager
def _floor(series: str) -> Iterator[tuple[str, int]]:
    """A floor app under uvicorn (httptools, one process): its base URL and pid."""
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "--factory"),
            f"bench.harness.floors:{series}_app",
            *("--port", str(port), "--http", "httptools", "--log-level", "warning"),
        ],
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:  # up once it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the {series} floor did not start") from None
                time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def _service(database_url: str, src: str) -> Iterator[tuple[str, int]]:
    env = {
        "DATABASE_URL": database_url,
        "PYTHONPATH": src,
        "INVENTORY_COALESCE_RESERVATIONS": "on",
        "INVENTORY_ADMIN_TOKEN": token_hex(16),
    }
    with ServerProcess(env, ["--workers", "1"], inherit_output=True) as server:
        yield server.url, server.process.pid


def _wrk(
    series: str, url: str, clients: int, seconds: float, prefix: str
) -> tuple[int, int, float]:
    """Answers that counted, answers that did not, and wrk's duration in seconds."""
    threads = str(min(2, clients))
    command = ["wrk", "-t", threads, "-c", str(clients), "-d", f"{seconds}s", "--timeout", "30s"]
    env = dict(os.environ)
    if series == "reserve":
        command += ["-s", str(DRIVERS / "reserve.lua"), f"{url}/graphql", "--", prefix, str(SPREAD)]
    else:
        env["BENCH_BODY"] = json.dumps(BODIES[series])
        command += ["-s", str(DRIVERS / "post.lua"), f"{url}/graphql"]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    if series == "reserve":
        found = re.search(r"WRK_RESULT (\{.*\})", out)
        assert found, out
        result = json.loads(found.group(1))
        return result["reservations"], result["other"], result["duration_us"] / 1e6
    found = re.search(r"WRK_POST (\{.*\})", out)
    assert found, out
    result = json.loads(found.group(1))
    return result["answered"] - result["refused"], result["refused"], result["duration_us"] / 1e6


async def _point(
    series: str,
    version: str,
    clients: int,
    round_: int,
    url: str,
    pid: int,
    seconds: int,
    prefix: str,
) -> Point:
    await asyncio.to_thread(_wrk, series, url, clients, WARM_UP_SECONDS, prefix)
    before = _server_cpu(pid)
    answered, refused, duration = await asyncio.to_thread(
        _wrk, series, url, clients, seconds, prefix
    )
    used = _server_cpu(pid) - before
    return Point(
        series,
        version,
        clients,
        round_,
        answered / duration,
        used / max(answered, 1) * 1e6,
        refused,
    )


async def run(
    before: str | None, rounds: int, seconds: int, clients_list: list[int]
) -> list[Point]:
    points: list[Point] = []
    with postgres() as server, tempfile.TemporaryDirectory(prefix="cpu-per-request-") as tmp:
        snapshot_src(Path(tmp) / "after")
        versions = {"after": str(Path(tmp) / "after" / "src")}
        if before is not None:
            versions["before"] = str(export_src(before, Path(tmp) / "before"))
        expect_imports(versions)
        # Each version on a database its own migrations made: an older `serve` does not
        # start on a database a newer one migrated.
        urls = {"after": await create_migrated_database(server, DATABASE, replace=True)}
        if "before" in versions:
            urls["before"] = await migrated_by(Path(versions["before"]), server, f"{DATABASE}_b")
        conns = {version: await asyncpg.connect(url) for version, url in urls.items()}
        try:
            for conn in conns.values():
                await seed(conn, "cpr-product", 1)
            kinds = [(s, "floor") for s in FLOORS] + [(s, v) for s in SERVICE for v in versions]
            n = 0
            for round_ in range(rounds):
                shift = round_ % len(kinds)
                for series, version in kinds[shift:] + kinds[:shift]:
                    for clients in clients_list:
                        n += 1
                        prefix = f"cpr-{n}"
                        if series == "reserve":
                            await seed(conns[version], prefix, SPREAD)
                        serving = (
                            _floor(series)
                            if version == "floor"
                            else _service(urls[version], versions[version])
                        )
                        with serving as (base, pid):
                            point = await _point(
                                series, version, clients, round_ + 1, base, pid, seconds, prefix
                            )
                        points.append(point)
                        print(
                            f"  round {round_ + 1} {series:10} {version:6} {clients:3} clients: "
                            f"{point.answers_per_second:7.0f}/s  server "
                            f"{point.server_us_per_request:6.0f} us/req"
                            + (f"  REFUSED {point.refused}" if point.refused else ""),
                            flush=True,
                        )
        finally:
            for conn in conns.values():
                await conn.close()
    return points


def report(points: list[Point], before: str | None) -> None:
    def median(series: str, version: str, clients: int, field: str) -> float:
        return statistics.median(
            getattr(p, field)
            for p in points
            if (p.series, p.version, p.clients) == (series, version, clients)
        )

    clients_list = sorted({p.clients for p in points})
    print("\nserver CPU per request (median over rounds), and against the floors")
    for clients in clients_list:
        floor = {s: median(s, "floor", clients, "server_us_per_request") for s in FLOORS}
        print(f"{clients} connections:")
        for series in FLOORS:
            print(f"  {series:10} floor   {floor[series]:6.0f} us")
        for series in SERVICE:
            for version in ("after", "before") if before else ("after",):
                us = median(series, version, clients, "server_us_per_request")
                rate = median(series, version, clients, "answers_per_second")
                print(
                    f"  {series:10} {version:7} {us:6.0f} us  {rate:6.0f}/s  "
                    f"{us / floor['starlette']:.1f}x the HTTP floor, "
                    f"{us / floor['strawberry']:.1f}x bare Strawberry"
                )
            if before:
                ratios = []
                for round_ in sorted({p.round for p in points}):
                    pair = {
                        p.version: p.server_us_per_request
                        for p in points
                        if (p.series, p.clients, p.round) == (series, clients, round_)
                    }
                    if {"after", "before"} <= pair.keys():
                        ratios.append(pair["after"] / pair["before"])
                print(
                    f"  {series:10} after/before CPU per request: "
                    f"{statistics.median(ratios):.2f} (rounds: "
                    + ", ".join(f"{r:.2f}" for r in ratios)
                    + ")"
                )


def draw_chart(points: list[Point], path: Path) -> None:
    """Bars: median server CPU per request of each series, 16 and 64 connections side by
    side, the floors first, each service series before and after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(s, "floor") for s in FLOORS] + [
        (s, v)
        for s in SERVICE
        for v in ("before", "after")
        if any(p.series == s and p.version == v for p in points)
    ]
    clients_list = sorted({p.clients for p in points})
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(clients_list)
    for i, clients in enumerate(clients_list):
        values = [
            statistics.median(
                p.server_us_per_request
                for p in points
                if (p.series, p.version, p.clients) == (series, version, clients)
            )
            for series, version in bars
        ]
        positions = [x + i * width for x in range(len(bars))]
        ax.bar(positions, values, width, label=f"{clients} connections")
        for x, value in zip(positions, values, strict=True):
            ax.text(x, value, f"{value:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks([x + width * (len(clients_list) - 1) / 2 for x in range(len(bars))])
    ax.set_xticklabels([f"{s}\n{v}" for s, v in bars], fontsize=8)
    ax.set_ylabel("server CPU per request (us)")
    ax.set_title("Server CPU per request, one serve process (median over rounds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="an earlier commit (any git ref) to measure beside")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--seconds", type=int, default=8, help="per point (default 8)")
    parser.add_argument("--clients", nargs="+", type=int, default=[16, 64], help="default: 16 64")
    parser.add_argument(
        "--chart-from", type=Path, help="only draw the chart from a saved run's JSON"
    )
    args = parser.parse_args()
    chart = ROOT / "bench" / "cpu_per_request.png"
    if args.chart_from is not None:
        draw_chart([Point(**p) for p in json.loads(args.chart_from.read_text())], chart)
        print(f"chart {chart}")
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (apt-get install wrk)")
    raise_open_files_limit()
    print(
        f"after: {describe('HEAD')}" + (f"\nbefore: {describe(args.before)}" if args.before else "")
    )
    points = asyncio.run(run(args.before, args.rounds, args.seconds, args.clients))
    report(points, args.before)
    out = ROOT / "bench-results" / "cpu_per_request.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps([asdict(p) for p in points], indent=1))
    print(f"\nsaved {out}")
    draw_chart(points, chart)
    print(f"chart {chart}")
    if any(p.refused for p in points):
        raise SystemExit(1)


if __name__ == "__main__":
    main()

"""Fan-out before and after: this checkout and an earlier commit, side by side in one run.

    python -m bench.fanout_ab dac8a07               # 1,000 and 5,000 subscribers
    python -m bench.fanout_ab dac8a07 --rounds 3 --fanout 1000

The earlier commit's src/ is exported (git archive) to a temporary directory and put
first on its server's PYTHONPATH; both servers (`serve --workers 2`, as in
bench.flash_sale) use one database, so the commits must agree on migrations. Each round
runs bench.flash_sale's fan-out points against both, alternating which goes first, so a
shared machine's drift hits both alike. Printed per version: the delay from commit to
delivery (p50, p99) and the server's CPU per delivered message, with after/before ratios;
saved to bench-results/fanout_ab.json.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from bench.common import ROOT, machine, postgres, save, server_process
from bench.flash_sale import (
    SERVE_ARGS,
    Bench,
    Plan,
    fanout_point,
    raise_open_files_limit,
    server_env,
)
from inventory_graphql.database import create_migrated_database

DATABASE = "inventory_bench_fanout_ab"


def export_src(ref: str, into: Path) -> Path:
    """The ref's src/ directory, unpacked under `into`."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "src"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def describe(ref: str) -> str:
    done = subprocess.run(
        ["git", "log", "-1", "--format=%h %s", ref], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip()


async def run(before_ref: str, sizes: list[int], rounds: int, changes: int) -> dict[str, Any]:
    started = time.time()
    results: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with postgres() as server, tempfile.TemporaryDirectory(prefix="fanout-ab-") as tmp:
        before_src = export_src(before_ref, Path(tmp))
        url = await create_migrated_database(server, DATABASE, replace=True)
        conn = await asyncpg.connect(url)
        try:
            plan = Plan(
                seconds=0,
                warmup_seconds=0,
                ceiling_clients=(),
                service_clients=(),
                live_off_clients=0,
                live_pairs=0,
                subscribers=0,
                fanout_subscribers=tuple(sizes),
                fanout_changes=changes,
                subscribers_per_process=1250,
                quiet_wait=60,
            )
            bench = Bench(plan, url, conn, Path(tmp))
            versions = {"before": {"PYTHONPATH": str(before_src)}, "after": {}}
            repeat = 0
            for round_number in range(rounds):
                order = ["before", "after"] if round_number % 2 == 0 else ["after", "before"]
                for version in order:
                    env = {**server_env("on"), **versions[version]}
                    with server_process(url, env, SERVE_ARGS) as base_url:
                        for size in sizes:
                            repeat += 1
                            point = await fanout_point(bench, base_url, size, repeat)
                            point["round"] = round_number
                            results[version].append(point)
                            print(
                                f"  round {round_number + 1} {version:6} {size:5,} subscribers:"
                                f" p50 {point['p50_ms']:5.0f} ms  p99 {point['p99_ms']:5.0f} ms"
                                f"  server {point['server_us_per_message']:6.1f} us/message",
                                flush=True,
                            )
        finally:
            await conn.close()
    return {
        "machine": machine(),
        "before": describe(before_ref),
        "after": describe("HEAD"),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "changes_per_point": changes,
        "points": results,
        "summary": summarize(results, sizes),
    }


def summarize(results: dict[str, list[dict[str, Any]]], sizes: list[int]) -> list[dict]:
    rows = []
    for size in sizes:
        row: dict[str, Any] = {"subscribers": size}
        for version, points in results.items():
            mine = [p for p in points if p["subscribers"] == size]
            for key in ("p50_ms", "p99_ms", "server_us_per_message"):
                row[f"{version}_{key}"] = round(statistics.median(p[key] for p in mine), 1)
        for key in ("p50_ms", "p99_ms", "server_us_per_message"):
            row[f"ratio_{key}"] = round(row[f"before_{key}"] / row[f"after_{key}"], 2)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", help="the earlier commit (any git ref)")
    parser.add_argument(
        "--fanout",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[1000, 5000],
        help="subscriber counts, comma-separated (default 1000,5000)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds (default 2)")
    parser.add_argument("--changes", type=int, default=20, help="changes per point (default 20)")
    args = parser.parse_args()
    raise_open_files_limit()
    result = uvloop.run(run(args.before, args.fanout, args.rounds, args.changes))
    print(f"\nbefore: {result['before']}\nafter:  {result['after']}")
    print("median over rounds; ratio = before / after (higher is better for after)")
    for row in result["summary"]:
        print(
            f"  {row['subscribers']:5,} subscribers:"
            f" p50 {row['before_p50_ms']:.0f} -> {row['after_p50_ms']:.0f} ms"
            f" ({row['ratio_p50_ms']:.2f}x),"
            f" p99 {row['before_p99_ms']:.0f} -> {row['after_p99_ms']:.0f} ms"
            f" ({row['ratio_p99_ms']:.2f}x),"
            f" server {row['before_server_us_per_message']:.0f} ->"
            f" {row['after_server_us_per_message']:.0f} us/message"
            f" ({row['ratio_server_us_per_message']:.2f}x)"
        )
    print(f"\nsaved {save('fanout_ab', result)}")


if __name__ == "__main__":
    main()

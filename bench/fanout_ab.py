"""Fan-out before and after: this checkout and an earlier commit, side by side in one run.

    python -m bench.fanout_ab dac8a07               # 1,000 and 5,000 subscribers
    python -m bench.fanout_ab dac8a07 --rounds 3 --fanout 1000

The earlier commit's src/ is exported (git archive) to a temporary directory and put
first on its server's PYTHONPATH (the run checks that it imports from there); both
servers (`serve --workers 2`, as in bench.flash_sale) use one database, so the commits
must agree on migrations. Each round runs bench.flash_sale's fan-out points
(bench.harness.points.fanout_point) against both, alternating which goes first, so a
shared machine's drift hits both alike. Printed per version: the delay from commit to
delivery (p50, p99) and the server's CPU per delivered message, with after/before ratios;
saved to bench-results/fanout_ab.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import asyncpg
import uvloop

from bench.harness.database import postgres
from bench.harness.plan import Plan, server_env
from bench.harness.points import fanout_point, serve
from bench.harness.report import fanout_ab_progress, print_fanout_ab
from bench.harness.results import FanoutABResult, FanoutResult, machine, save
from bench.harness.session import Bench, raise_open_files_limit
from bench.harness.summary import fanout_summary
from bench.harness.versions import describe, expect_imports, export_src
from inventory_graphql.database import create_migrated_database

DATABASE = "inventory_bench_fanout_ab"


async def run(before_ref: str, sizes: list[int], rounds: int, changes: int) -> FanoutABResult:
    started = time.time()
    results: dict[str, list[FanoutResult]] = {"before": [], "after": []}
    with postgres() as server, tempfile.TemporaryDirectory(prefix="fanout-ab-") as tmp:
        before_src = export_src(before_ref, Path(tmp))
        expect_imports({"before": str(before_src)})
        url = await create_migrated_database(server, DATABASE, replace=True)
        conn = await asyncpg.connect(url)
        try:
            plan = Plan(
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
                    with serve(bench, env) as server_process:
                        for size in sizes:
                            repeat += 1
                            point = await fanout_point(bench, server_process, size, repeat)
                            point = replace(point, round=round_number)
                            results[version].append(point)
                            print(fanout_ab_progress(round_number, version, point), flush=True)
        finally:
            await conn.close()
    return FanoutABResult(
        machine=machine(),
        before=describe(before_ref),
        after=describe("HEAD"),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        changes_per_point=changes,
        points=results,
        summary=fanout_summary(results, sizes),
    )


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
    print_fanout_ab(result)
    print(f"\nsaved {save('fanout_ab', result)}")


if __name__ == "__main__":
    main()

"""Fan-out before and after: this checkout and an earlier commit, side by side in one run.

    python -m bench.fanout_ab dac8a07               # 1,000 and 5,000 subscribers
    python -m bench.fanout_ab dac8a07 --rounds 3 --fanout 1000

The earlier commit's src/ is exported (git archive) to a temporary directory and put
first on its server's PYTHONPATH (the run checks that it imports from there); each
server (`serve --workers 2`, pinned, as an earlier `serve` defaults to one worker) runs
on a database its own commit's migrations made (an older `serve` does not understand a
newer trigger's payload), on one
PostgreSQL server. Each round runs bench.flash_sale's fan-out points
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

from bench.harness.database import migrated_by, postgres
from bench.harness.plan import AB_WORKERS, Plan, server_env
from bench.harness.points import fanout_point, serve
from bench.harness.report import fanout_ab_progress, print_fanout_ab
from bench.harness.results import FanoutABResult, FanoutResult, machine, save
from bench.harness.session import Bench, raise_open_files_limit
from bench.harness.summary import fanout_summary
from bench.harness.versions import describe, expect_imports, export_src
from inventory_graphql.database import create_migrated_database
from inventory_graphql.inventory.catalog import ADJUST

DATABASE = "inventory_bench_fanout_ab"

# The earlier commit's change to the stock, in the columns every migration so far has had:
# the product's update (its trigger notifies) and the ledger row.
ADJUST_ANY_VERSION = """
WITH adjusted AS (
    UPDATE product SET quantity = quantity + $2::bigint WHERE sku = $1 RETURNING id, version
), movement AS (
    INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reason)
    SELECT id, 'ADJUST', $2, 0, $3 FROM adjusted
)
SELECT version FROM adjusted
"""


async def run(before_ref: str, sizes: list[int], rounds: int, changes: int) -> FanoutABResult:
    started = time.time()
    results: dict[str, list[FanoutResult]] = {"before": [], "after": []}
    with postgres() as server, tempfile.TemporaryDirectory(prefix="fanout-ab-") as tmp:
        before_src = export_src(before_ref, Path(tmp))
        expect_imports({"before": str(before_src)})
        urls = {
            "after": await create_migrated_database(server, DATABASE, replace=True),
            "before": await migrated_by(before_src, server, f"{DATABASE}_before"),
        }
        adjust = {"after": ADJUST, "before": ADJUST_ANY_VERSION}
        plan = Plan(
            fanout_subscribers=tuple(sizes),
            fanout_changes=changes,
            subscribers_per_process=1250,
            quiet_wait=60,
        )
        benches: dict[str, Bench] = {}
        try:
            for version, url in urls.items():
                benches[version] = Bench(plan, url, await asyncpg.connect(url), Path(tmp))
            versions = {"before": {"PYTHONPATH": str(before_src)}, "after": {}}
            repeat = 0
            for round_number in range(rounds):
                order = ["before", "after"] if round_number % 2 == 0 else ["after", "before"]
                for version in order:
                    env = {**server_env("on"), **versions[version]}
                    bench = benches[version]
                    with serve(bench, env, AB_WORKERS) as server_process:
                        for size in sizes:
                            repeat += 1
                            point = await fanout_point(
                                bench, server_process, size, repeat, adjust[version]
                            )
                            point = replace(point, round=round_number)
                            results[version].append(point)
                            print(fanout_ab_progress(round_number, version, point), flush=True)
        finally:
            for bench in benches.values():
                await bench.conn.close()
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

"""Flash sale: the service's reservation throughput next to PostgreSQL's own ceiling.

    python -m bench.flash_sale              # full run, 8-10 minutes
    python -m bench.flash_sale --quick      # smoke run, 2-4 minutes
    python -m bench.flash_sale --seconds 5  # another duration per measurement point
    python -m bench.flash_sale --quick --seconds 1 --fanout 100 --changes 2
                                            # the smallest smoke run, about 3 minutes

Needs `pip install -e '.[test,bench]'` and `wrk` on PATH. One run, one PostgreSQL server
(embedded, or BENCH_DATABASE_URL's) and one fresh database in it, created with
`inventory_graphql.database.migrate` so both triggers are installed as in production:
the version-bump row trigger and migration 002's statement-level NOTIFY trigger.

Two loads: "hot" is one product, "spread" is 10,000 products (each request picks one at
random). Every measurement point gets products of its own (100,000,000 units each, with
the matching CREATE ledger row), so no point sells out another's stock or inherits its
dead row versions.

1. Ceiling, pgbench: the design's single statement, `-M prepared -j 2 -n`, 16 and 64
   clients, with a separate process LISTENing on the channel as the server does. Also
   64 clients with the NOTIFY trigger disabled (labelled "NOTIFY off"). p50/p99 come
   from pgbench's per-transaction log.
2. Ceiling, raw asyncpg: the same statement from one process (uvloop), 16 and 64
   concurrent tasks, in two series: a pool of 8 connections ("raw asyncpg", as in earlier
   runs) and a pool as large as the tasks, 16 and 64 connections ("raw asyncpg, pool =
   clients": the strongest hand-written loop, issue 17's yardstick).
   pgbench and the raw loop hold stock without ledger rows or holds, which
   `inventory-graphql check` would rightly flag. After each of their points the bench
   puts their products back in balance (`reserved = 0`: the units they held were never
   held by anyone), and runs `check` once at the end of the phase to prove it.
3. The service: `inventory-graphql serve` as a user gets it by default (no --workers:
   serve's default, one worker per core; the JSON's serve_workers is null), driven by
   wrk (C, its own process) with one document with variables per request, at 16, 64, 256
   and 1,024 connections, with 100 WebSocket subscribers (another process) reading the
   point's first product (for "hot" the product under load; for "spread" one of the
   10,000). Each series runs twice: INVENTORY_COALESCE_RESERVATIONS=on ("service
   (coalesced)", after) and =off ("service (per-request)", before), one server process
   per series, warmed up on a product of its own first. Then the cost of live updates:
   64 clients on the hot load with live updates on (as above, but the subscribers'
   process at niceness 10: they stand for browsers on other machines, so they read with
   the CPU the server leaves rather than the server's), on with the subscribers not niced
   (as runs before issue 17 measured it), and off (NOTIFY trigger disabled, no
   subscribers), in three sets measured back to back, the order alternating, after one
   unrecorded point that lets the machine settle; the target takes the median pair's
   on / off (single points on this shared machine swing by 10-15%), and the not-niced
   ratios are printed beside it.
4. Fan-out: the delay from a committed change to its delivery to 1,000 and 5,000
   subscribers of one server, p50/p99, the subscribers spread over client processes of
   at most 1,250 each. The changer records time.time() just before it sends the change
   (so the delay includes the statement); the subscriber processes record time.time() on
   arrival.
5. Verdicts after every service point, once in-flight requests have settled: no product
   has reserved > quantity; the Reservations wrk counted equal the stock consumed on the
   point's products, up to the requests wrk had in flight when it stopped (the server still
   commits those, but wrk never sees the answers; the bench prints the exact gap); every
   answer was a Reservation (stock never runs out here) or BUSY (503, retriable: the
   request's deadline passed, nothing held; the per-request path's queue at 1,024
   clients), counted apart; and `python -m inventory_graphql check` passes on the whole
   database. A failed verdict makes the command exit 1; a missed target does not.

Targets, printed with their values: the service (coalesced) at 64 clients >= 1.0x
pgbench on the hot product, and >= 0.5x raw asyncpg on 10,000 products, against both
the pool of 8 and the pool of 64 (issue 17's, for the default `serve`); hot 1,024 / 16
clients >= 0.9 (no collapse); live updates on / off >= 0.9; fan-out to 5,000
subscribers p99 <= 500 ms.

CPU use per process group (server, load generator, subscribers, PostgreSQL, everything
else) is sampled during every point, to tell a server-bound number from a client-bound
one. Before each point the bench waits (at most 20 s a point, --quiet-wait in all) for
CPU use by processes not its own to drop below 0.25 cores; points during which they used
0.5 cores or more are marked "!" in the table: on 2 cores such numbers are not clean.

Results: a table on stdout, bench-results/flash_sale.json, and a chart of throughput
against clients saved as bench/flash_sale.png and bench-results/flash_sale.png.

This script is the order of the phases; the points, drivers, CPU metering, client
processes, results and report are bench.harness's.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg
import uvloop

from bench.harness import RESULTS
from bench.harness.clients import client
from bench.harness.cpu import QUIET_WAIT_PER_POINT
from bench.harness.database import notify_trigger_off, postgres, postgres_settings, run_check
from bench.harness.plan import (
    ASYNCPG,
    ASYNCPG_FULL_POOL,
    LOAD_TITLES,
    LOADS,
    MODES,
    PGBENCH,
    PGBENCH_NOTIFY_OFF,
    SERVE_WORKERS,
    SERVICE,
    SERVICE_LIVE_OFF,
    SERVICE_LIVE_ON,
    SERVICE_LIVE_ON_SHARED,
    SUBSCRIBER_NICENESS,
    Plan,
    server_env,
)
from bench.harness.points import (
    asyncpg_point,
    fanout_point,
    pgbench_point,
    serve,
    service_point,
    warm_up,
)
from bench.harness.report import (
    draw_chart,
    exit_unless_ok,
    print_fanout_point,
    print_flash_sale,
)
from bench.harness.results import Ceiling, FanoutResult, FlashSaleResult, machine, save
from bench.harness.session import Bench, raise_open_files_limit
from bench.harness.summary import before_after, targets
from bench.harness.versions import code_version
from inventory_graphql.database import create_migrated_database
from inventory_graphql.testing.server import ServerProcess

DATABASE = "inventory_bench_flash_sale"


# ---------------------------------------------------------------- 1, 2. the ceiling


async def ceiling_phase(bench: Bench) -> Ceiling:
    plan = bench.plan
    async with client("listen", bench.url) as listener:
        for load in LOADS:
            for clients in plan.ceiling_clients:
                bench.record(await pgbench_point(bench, PGBENCH, load, clients, listener))
        async with notify_trigger_off(bench.conn):
            for load in LOADS:
                point = await pgbench_point(
                    bench, PGBENCH_NOTIFY_OFF, load, plan.live_off_clients, listener
                )
                bench.record(point)
        for series in (ASYNCPG, ASYNCPG_FULL_POOL):
            for load in LOADS:
                for tasks in plan.ceiling_clients:
                    bench.record(await asyncpg_point(bench, series, load, tasks, listener))
        heard = await listener.finish()
    check = await run_check(bench.url)
    print(f"  check after the ceiling phase: {check.summary}", flush=True)
    return Ceiling(heard["notifications"], check)


# ---------------------------------------------------------------- 3. the service


async def service_series(bench: Bench, mode: str, load: str) -> None:
    plan = bench.plan
    with serve(bench, server_env(MODES[mode])) as server:
        await warm_up(bench, server, f"{mode}.{load}")
        for clients in plan.service_clients:
            bench.record(await service_point(bench, SERVICE[mode], server, load, clients, True))
        if load == "hot" and mode == "coalesced":
            await live_updates_cost(bench, server)


async def live_updates_cost(bench: Bench, server: ServerProcess) -> None:
    """Live updates on and off at one load, in pairs measured back to back (the order
    alternating), so the shared machine's drift hits both sides of each ratio alike."""
    clients = bench.plan.live_off_clients
    if bench.plan.live_pairs:
        # Not recorded: the pairs must not start in the wake of the 1,024-client point
        # (connections closing, autovacuum), which slowed whichever side came first.
        async with notify_trigger_off(bench.conn):
            settle = await service_point(bench, SERVICE_LIVE_OFF, server, "hot", clients, False, 99)
        if not settle.ok:  # its numbers are not kept; its verdicts still count
            bench.fail(f"settling point before the live pairs: {settle.verdicts}")
    order = (SERVICE_LIVE_ON, SERVICE_LIVE_ON_SHARED, SERVICE_LIVE_OFF)
    for pair in range(bench.plan.live_pairs):
        for series in order if pair % 2 == 0 else order[::-1]:
            if series != SERVICE_LIVE_OFF:
                niceness = SUBSCRIBER_NICENESS if series == SERVICE_LIVE_ON else 0
                point = await service_point(
                    bench,
                    series,
                    server,
                    "hot",
                    clients,
                    True,
                    pair + 1,
                    subscriber_niceness=niceness,
                )
            else:
                async with notify_trigger_off(bench.conn):
                    point = await service_point(
                        bench, SERVICE_LIVE_OFF, server, "hot", clients, False, pair + 1
                    )
            point.detail.pair = pair
            bench.record(point)


async def service_phase(bench: Bench) -> None:
    for load in LOADS:
        for mode in MODES:
            print(f"{SERVICE[mode]}, {LOAD_TITLES[load]}:", flush=True)
            try:
                await service_series(bench, mode, load)
            except Exception as error:  # record it, measure the rest, exit 1 at the end
                bench.fail(f"{SERVICE[mode]}, {LOAD_TITLES[load]}: {error!r}")


# ---------------------------------------------------------------- 4. fan-out


async def fanout_phase(bench: Bench) -> list[FanoutResult]:
    results = []
    try:
        with serve(bench, server_env("on")) as server:
            for subscribers in bench.plan.fanout_subscribers:
                result = await fanout_point(bench, server, subscribers)
                print_fanout_point(result)
                results.append(result)
    except Exception as error:
        bench.fail(f"fan-out: {error!r}")
    return results


# ---------------------------------------------------------------- main


def plan_from(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        seconds=args.seconds or (2 if quick else 8),
        warmup_seconds=1 if quick else 2,
        ceiling_clients=(16, 64),
        service_clients=(16, 64, 256, 1024),
        live_off_clients=64,
        live_pairs=1 if quick else 3,
        subscribers=100,
        fanout_subscribers=tuple(args.fanout),
        fanout_changes=args.changes or (5 if quick else 20),
        subscribers_per_process=1250,
        quiet_wait=args.quiet_wait,
    )


async def run(plan: Plan) -> FlashSaleResult:
    started = time.time()
    with postgres() as server, tempfile.TemporaryDirectory(prefix="flash-sale-") as tmp:
        url = await create_migrated_database(server, DATABASE, replace=True)
        conn = await asyncpg.connect(url)
        try:
            bench = Bench(plan, url, conn, Path(tmp))
            settings = await postgres_settings(conn)
            print(f"database {DATABASE}; PostgreSQL {settings}", flush=True)
            print("ceiling: pgbench and raw asyncpg", flush=True)
            ceiling = await ceiling_phase(bench)
            await service_phase(bench)
            print("fan-out", flush=True)
            fanout = await fanout_phase(bench)
        finally:
            await conn.close()
    points = bench.points
    return FlashSaleResult(
        machine=machine(),
        code=code_version(),
        postgres=settings,
        plan=plan,
        serve_workers=SERVE_WORKERS,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        duration_s=round(time.time() - started),
        points=points,
        ceiling=ceiling,
        fanout=fanout,
        before_after=before_after(points, plan),
        targets=targets(points, fanout, plan),
        errors=bench.errors,
        quiet_waited_s=round(bench.quiet_waited),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, help="per measurement point (default 8)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per point")
    parser.add_argument(
        "--fanout",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[1000, 5000],
        help="fan-out sizes, comma-separated (default 1000,5000)",
    )
    parser.add_argument("--changes", type=int, help="fan-out changes (default 20, quick 5)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        help="seconds the whole run may spend waiting for other processes' CPU use to drop "
        f"before a point, at most {QUIET_WAIT_PER_POINT:.0f} per point (default 120)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (apt-get install wrk)")
    raise_open_files_limit()
    result = uvloop.run(run(plan_from(args)))
    print_flash_sale(result)
    print(f"\nsaved {save('flash_sale', result)}")
    chart = Path(__file__).with_suffix(".png")
    draw_chart(result, chart)
    shutil.copy(chart, RESULTS / "flash_sale.png")
    print(f"chart {chart} (copy in {RESULTS / 'flash_sale.png'})")
    exit_unless_ok(result, "a verdict failed (oversold, answers and stock disagree, or check)")


if __name__ == "__main__":
    main()

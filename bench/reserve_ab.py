"""Reservations before and after: an earlier commit and this working tree, side by side.

    python -m bench.reserve_ab 5007435                        # 3 rounds, 8 s a point
    python -m bench.reserve_ab 5007435 --rounds 3 --seconds 10

Needs `pip install -e '.[test,bench]'` and `wrk` on PATH. "before" is the earlier
commit's src/, exported (git archive) to a temporary directory; "after" is this
checkout's src/ as it is on disk, uncommitted changes included, copied to a temporary
directory when the run starts (so edits made while it runs change nothing; the JSON
records the diff against HEAD that was measured). Each is put first on its processes'
PYTHONPATH.

One PostgreSQL server (embedded, or BENCH_DATABASE_URL's) and one fresh database,
migrated by this checkout (create_migrated_database): the working tree may add
migrations, and an older commit's `serve` applies only those it knows, skipping the rest.
The run checks that both versions import from where they should before measuring.

Per round (default 3), for each load ("hot": one product, "spread": 10,000 products, as
in bench.flash_sale) and each client count (16, 64): one service point for "before" and
one for "after", back to back, the order alternating from round to round, so a shared
machine's drift hits both alike. Every point gets a server process of its own (`serve
--workers 2`, pinned, as an earlier `serve` defaults to one worker;
INVENTORY_COALESCE_RESERVATIONS=on), warmed up on a product of its own, and products of
its own; it is bench.flash_sale's service point
(bench.harness.points.service_point): wrk with one reserve document per request, 100
WebSocket subscribers on the point's first product (--subscribers 0: none), CPU per
process group, and the verdicts once in-flight requests have settled (no product
oversold, Reservations counted equal the stock consumed up to the requests cut off by
wrk's stop, every answer a Reservation, and `inventory-graphql check` passes on the
whole database).

Printed per (load, clients): holds/s, p50 and p99 latency (wrk's) and the server's CPU
per answered request, the median over rounds of each version, and the median of the
per-round after/before ratios (for holds/s higher is better for after, for the others
lower). The acceptance criterion, coalesced holds/s within 10% of before, is marked per
point (after/before >= 0.90). Points during which processes not ours used 0.5 cores or
more are marked "!". Saved to bench-results/reserve_ab.json. Exit 1 if a verdict failed
or a point could not be measured.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg
import uvloop

from bench.harness import webhooks
from bench.harness.database import applied_migrations, migrated_by, postgres, postgres_settings
from bench.harness.plan import AB_WORKERS, LOADS, SERVICE, Plan, server_env
from bench.harness.points import serve, service_point, warm_up
from bench.harness.report import (
    ab_progress,
    exit_unless_ok,
    print_ab_points,
    print_ab_stock,
    print_ab_summary,
)
from bench.harness.results import ABPoint, ReserveABResult, machine, save
from bench.harness.session import Bench, raise_open_files_limit
from bench.harness.summary import VERSIONS, reserve_summary
from bench.harness.versions import describe, expect_imports, export_src, snapshot_src
from inventory_graphql.database import create_migrated_database

DATABASE = "inventory_bench_reserve_ab"
CLIENTS = (16, 64)


async def measure(
    bench: Bench,
    env: dict[str, str],
    load: str,
    clients: int,
    repeat: int,
    version: str,
    round_number: int,
) -> ABPoint:
    """One service point on a server process of its own."""
    with serve(bench, env, AB_WORKERS) as server:
        await warm_up(bench, server, f"{load}.{clients}.{repeat}")
        live = bench.plan.subscribers > 0
        point = await service_point(
            bench, SERVICE["coalesced"], server, load, clients, live, repeat
        )
    wrk = point.detail.wrk
    seconds = wrk.duration_us / 1e6
    # Server CPU per answered request (its cores over the point times the point's length).
    server_us = point.cpu.get("server", 0.0) * seconds / max(1, wrk.received) * 1e6
    return ABPoint(point, round(server_us, 1), version, round_number)


async def run(
    before_ref: str,
    plan: Plan,
    rounds: int,
    loads: list[str],
    clients_list: list[int],
    coalesce: str = "on",
    webhook: bool = False,
    separate: bool = False,
) -> ReserveABResult:
    started = time.time()
    results: dict[str, list[ABPoint]] = {version: [] for version in VERSIONS}
    delivered: dict[str, object] | None = None
    with (
        postgres() as server,
        tempfile.TemporaryDirectory(prefix="reserve-ab-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        before_src = export_src(before_ref, Path(tmp) / "before")
        after = snapshot_src(Path(tmp) / "after")
        after_src = Path(tmp) / "after" / "src"
        # Everything this run starts (servers, `check`, client processes) imports the
        # snapshot, unless told otherwise: "before" servers are (and, with --webhook,
        # `check` on before's database).
        os.environ["PYTHONPATH"] = str(after_src)
        paths = {"before": str(before_src), "after": str(after_src)}
        expect_imports(paths)
        urls = {version: "" for version in VERSIONS}
        urls["after"] = await create_migrated_database(server, DATABASE, replace=True)
        # One database for both, unless the versions' triggers differ: with --webhook each
        # version writes to a database its own migrations made (the feed's triggers cannot
        # be turned off).
        separate = separate or webhook
        urls["before"] = (
            await migrated_by(before_src, server, f"{DATABASE}_before")
            if separate
            else urls["after"]
        )
        conns = {"after": await asyncpg.connect(urls["after"])}
        conns["before"] = await asyncpg.connect(urls["before"]) if separate else conns["after"]
        conn = conns["after"]
        try:
            settings = await postgres_settings(conn)
            migrations = await applied_migrations(conn)
            print(f"database {DATABASE}; PostgreSQL {settings['server_version']}", flush=True)
            print(f"migrations (this checkout): {', '.join(migrations)}", flush=True)
            if separate:
                before_migrations = await applied_migrations(conns["before"])
                print(f"migrations (before): {', '.join(before_migrations)}", flush=True)
            print(f"before: {describe(before_ref)}", flush=True)
            changed = " + uncommitted src/ changes" if after.src_changed else ""
            print(f"after:  {after.commit}{changed}", flush=True)
            if after.diff_stat:
                print("  " + after.diff_stat.replace("\n", "\n  "), flush=True)
            benches = {v: Bench(plan, urls[v], conns[v], Path(tmp)) for v in VERSIONS}
            extra: dict[str, dict[str, str]] = {v: {} for v in VERSIONS}
            endpoint = None
            if webhook:
                receiver_url = stack.enter_context(webhooks.receiver())
                extra["after"] = {
                    **webhooks.server_env(receiver_url),
                    "PYTHONPATH": paths["after"],
                }
                admin = server_env(coalesce)["INVENTORY_ADMIN_TOKEN"]
                setup_env = {
                    **server_env(coalesce),
                    **extra["after"],
                    "INVENTORY_ADMIN_TOKEN": admin,
                }
                with serve(benches["after"], setup_env, AB_WORKERS) as setup:
                    endpoint = await webhooks.subscribe(conn, setup.url, admin, receiver_url)
                print(f"webhook endpoint {endpoint.id} -> {receiver_url}", flush=True)
            repeat = 0
            for round_number in range(rounds):
                order = VERSIONS if round_number % 2 == 0 else VERSIONS[::-1]
                print(f"round {round_number + 1} of {rounds} ({order[0]} first)", flush=True)
                for load, clients, version in itertools.product(loads, clients_list, order):
                    repeat += 1
                    env = {**server_env(coalesce), **extra[version], "PYTHONPATH": paths[version]}
                    if separate:
                        os.environ["PYTHONPATH"] = paths[version]  # `check` of its own
                    try:
                        point = await measure(
                            benches[version], env, load, clients, repeat, version, round_number
                        )
                    except Exception as error:  # record it, measure the rest
                        where = f"round {round_number + 1} {version} {load} {clients} clients"
                        benches[version].fail(f"{where}: {error!r}")
                        continue
                    results[version].append(point)
                    print(f"  {ab_progress(point)}", flush=True)
                    if endpoint is not None and version == "after":
                        lag = await webhooks.backlog(conn, endpoint)
                        print(f"    webhook backlog when the server stopped: {lag} events")
            if endpoint is not None:
                # The last after server has stopped: one more delivers what is left.
                env = {**server_env(coalesce), **extra["after"]}
                with serve(benches["after"], env, AB_WORKERS):
                    delivered = await webhooks.caught_up(conn, endpoint, timeout=300)
                print(f"webhook: {delivered}", flush=True)
                if not webhooks.complete(delivered):
                    benches["after"].fail(f"webhook delivery incomplete: {delivered}")
        finally:
            for c in {id(c): c for c in conns.values()}.values():
                await c.close()
    errors = [e for v in VERSIONS for e in benches[v].errors]
    return ReserveABResult(
        machine=machine(),
        postgres=settings,
        migrations=migrations,
        before_ref=before_ref,
        before_commit=describe(before_ref),
        after=after,
        plan=plan,
        rounds=rounds,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        duration_s=round(time.time() - started),
        points=results,
        summary=reserve_summary(results, loads, clients_list),
        errors=errors,
        quiet_waited_s=round(
            sum(b.quiet_waited for b in {id(b): b for b in benches.values()}.values())
        ),
        webhook=delivered,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", help="the earlier commit (any git ref)")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (default 3)")
    parser.add_argument("--seconds", type=int, default=8, help="per point (default 8)")
    parser.add_argument(
        "--subscribers",
        type=int,
        default=100,
        help="WebSocket subscribers on each point's first product (default 100, as "
        "bench.flash_sale; 0: none)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="seconds the whole run may spend waiting for other processes' CPU use to drop "
        "before a point (default 60)",
    )
    parser.add_argument(
        "--loads", nargs="+", choices=list(LOADS), default=list(LOADS), help="default: both"
    )
    parser.add_argument(
        "--clients", nargs="+", type=int, default=list(CLIENTS), help="default: 16 64"
    )
    parser.add_argument(
        "--webhook",
        action="store_true",
        help="each version on a database its own migrations made; after's servers deliver "
        "every stock event to a webhook endpoint (a receiver process), checked at the end",
    )
    parser.add_argument(
        "--separate-databases",
        action="store_true",
        help="each version on a database its own migrations made (implied by --webhook): "
        "to compare across a migration without a webhook endpoint",
    )
    parser.add_argument(
        "--per-request",
        action="store_true",
        help="measure the per-request path (INVENTORY_COALESCE_RESERVATIONS=off) instead",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (apt-get install wrk)")
    raise_open_files_limit()
    plan = Plan(
        seconds=args.seconds,
        warmup_seconds=2,
        ceiling_clients=(),
        service_clients=tuple(args.clients),
        live_off_clients=0,
        live_pairs=0,
        subscribers=args.subscribers,
        fanout_subscribers=(),
        fanout_changes=0,
        subscribers_per_process=1250,
        quiet_wait=args.quiet_wait,
    )
    result = uvloop.run(
        run(
            args.before,
            plan,
            args.rounds,
            args.loads,
            args.clients,
            "off" if args.per_request else "on",
            args.webhook,
            args.separate_databases,
        )
    )
    print_ab_points(result)
    print_ab_stock(result)
    print_ab_summary(result)
    name = "events_ab" if args.webhook else "feed_ab" if args.separate_databases else "reserve_ab"
    print(f"\nsaved {save(name, result)}")
    exit_unless_ok(result, "a verdict failed or a point could not be measured")


if __name__ == "__main__":
    main()

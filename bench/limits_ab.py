"""Purchase limits at flash-sale speed: the hot product with a limit per buyer and another
buyer on every request, next to the unlimited coalesced hot point, in one run.

    python -m bench.limits_ab                          # 3 rounds, 8 s a point, 64 clients
    python -m bench.limits_ab --rounds 5 --clients 16 64

Needs `pip install -e '.[test,bench]'` and `wrk` on PATH. One PostgreSQL server
(embedded, or BENCH_DATABASE_URL's), one fresh database migrated by this checkout. The
service is this checkout's src/ as it is on disk when the run starts (copied to a
temporary directory, so edits made while it runs change nothing; the JSON records the
diff against HEAD that was measured).

Series, each a service point of bench.flash_sale's kind on one hot product
(bench.harness.points.service_point: `serve --workers 2`, coalescing on, wrk with one
reserve document per request, 100 WebSocket subscribers on the product), every point on
a server process of its own with INVENTORY_BUYER_TOKEN_SECRET set, warmed up first:

- unlimited: anonymous requests, no purchase limit: the point every other is compared
  with (today's coalesced hot point);
- limited: the product has a purchase limit (--limit, default 1) and every request
  carries another buyer's token (`Authorization: Bearer`), so each is decided against
  that buyer's tally under the row lock and every one is granted;
- buyers (--series to leave it out): buyer tokens as in limited, no limit: what verifying
  the tokens costs, apart from the limit.

Buyer tokens are minted before the run by this process (BuyerTokens, the service's own
helper) and dealt out to wrk's threads as files, so the load generator only reads a line
per request: its CPU stays what it is for anonymous requests. A point can use at most
--tokens of them (default 8,000 a second of a point); a token used twice is counted and
fails the point's verdicts.

Per round (default 3) and client count, the series back to back, the order reversed
every other round, so a shared machine's drift hits all alike. Verdicts per point, once
in-flight requests have settled: no product oversold, Reservations counted equal the
stock consumed (up to the requests wrk cut off), every answer a Reservation, `check`
passes on the whole database; with buyers, no (buyer, product) above the limit (SQL over
reservation and reservation_line; no anonymous hold of a limited product), one hold per
buyer and no token reused.

Printed: per point holds/s, latency, server CPU per request; per client count the median
holds/s of each series and the median of the per-round ratios to unlimited (the issue's
target: limited / unlimited >= 0.9). Points during which processes not ours used 0.5
cores or more are marked "!". Saved to bench-results/limits_ab.json. Exit 1 if a verdict
failed or a point could not be measured.
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg
import uvloop

from bench.harness.database import applied_migrations, postgres, postgres_settings
from bench.harness.plan import AB_WORKERS, Plan, server_env
from bench.harness.points import serve, service_point, warm_up
from bench.harness.report import ab_progress, exit_unless_ok, print_limits_ab
from bench.harness.results import ABPoint, LimitsABResult, machine, save
from bench.harness.session import Bench, raise_open_files_limit
from bench.harness.summary import limits_summary
from bench.harness.versions import expect_imports, snapshot_src
from inventory_graphql.api.buyers import BuyerTokens
from inventory_graphql.database import create_migrated_database

DATABASE = "inventory_bench_limits_ab"
SERIES = ("unlimited", "limited", "buyers")
TOKENS_PER_SECOND = 8_000  # above any rate this machine reaches on one hot product


def mint(secret: str, count: int, hours: float) -> list[str]:
    """`count` tokens of distinct buyers, valid for the whole run."""
    tokens = BuyerTokens(secret)
    return [tokens.mint(f"bench-buyer-{i}", int(hours * 3600)) for i in range(count)]


async def measure(
    bench: Bench,
    env: dict[str, str],
    series: str,
    clients: int,
    repeat: int,
    round_number: int,
    tokens: list[str],
    limit: int,
) -> ABPoint:
    """One service point on a server process of its own."""
    with serve(bench, env, AB_WORKERS) as server:
        await warm_up(bench, server, f"{series}.{clients}.{repeat}")
        point = await service_point(
            bench,
            series,
            server,
            "hot",
            clients,
            bench.plan.subscribers > 0,
            repeat,
            tokens=tokens if series != "unlimited" else (),
            purchase_limit=limit if series == "limited" else None,
        )
    wrk = point.detail.wrk
    seconds = wrk.duration_us / 1e6
    # Server CPU per answered request (its cores over the point times the point's length).
    server_us = point.cpu.get("server", 0.0) * seconds / max(1, wrk.received) * 1e6
    return ABPoint(point, round(server_us, 1), series, round_number)


async def run(
    plan: Plan, rounds: int, clients_list: list[int], series: list[str], limit: int, count: int
) -> LimitsABResult:
    started = time.time()
    secret = secrets.token_urlsafe(48)
    minting = time.perf_counter()
    tokens = mint(secret, count, hours=2 + rounds * len(series) * len(clients_list) / 60)
    minted_in = time.perf_counter() - minting
    print(f"{count:,} buyer tokens minted in {minted_in:.1f} s", flush=True)
    results: dict[str, list[ABPoint]] = {name: [] for name in series}
    with postgres() as server, tempfile.TemporaryDirectory(prefix="limits-ab-") as tmp:
        code = snapshot_src(Path(tmp) / "measured")
        src = str(Path(tmp) / "measured" / "src")
        # Servers, `check` and client processes all import the snapshot.
        os.environ["PYTHONPATH"] = src
        expect_imports({"measured": src})
        url = await create_migrated_database(server, DATABASE, replace=True)
        conn = await asyncpg.connect(url)
        try:
            settings = await postgres_settings(conn)
            migrations = await applied_migrations(conn)
            print(f"database {DATABASE}; PostgreSQL {settings['server_version']}", flush=True)
            changed = " + uncommitted src/ changes" if code.src_changed else ""
            print(f"code: {code.commit}{changed}", flush=True)
            bench = Bench(plan, url, conn, Path(tmp))
            env = {
                **server_env("on"),
                "INVENTORY_BUYER_TOKEN_SECRET": secret,
                "PYTHONPATH": src,
            }
            repeat = 0
            for round_number in range(rounds):
                order = series if round_number % 2 == 0 else series[::-1]
                print(f"round {round_number + 1} of {rounds} ({order[0]} first)", flush=True)
                for clients, name in itertools.product(clients_list, order):
                    repeat += 1
                    try:
                        point = await measure(
                            bench, env, name, clients, repeat, round_number, tokens, limit
                        )
                    except Exception as error:  # record it, measure the rest
                        bench.fail(f"round {round_number + 1} {name} {clients} clients: {error!r}")
                        continue
                    results[name].append(point)
                    print(f"  {ab_progress(point)}", flush=True)
        finally:
            await conn.close()
    return LimitsABResult(
        machine=machine(),
        postgres=settings,
        migrations=migrations,
        code=code,
        plan=plan,
        rounds=rounds,
        purchase_limit=limit,
        tokens_per_point=count,
        minted_in_s=round(minted_in, 2),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        duration_s=round(time.time() - started),
        points=results,
        summary=limits_summary(results, clients_list),
        errors=bench.errors,
        quiet_waited_s=round(bench.quiet_waited),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--seconds", type=int, default=8, help="per point (default 8)")
    parser.add_argument("--clients", nargs="+", type=int, default=[64], help="default: 64")
    parser.add_argument(
        "--series",
        nargs="+",
        choices=SERIES,
        default=list(SERIES),
        help="default: all three (unlimited is always measured)",
    )
    parser.add_argument("--limit", type=int, default=1, help="units per buyer (default 1)")
    parser.add_argument(
        "--tokens",
        type=int,
        default=0,
        help=f"buyer tokens a point may use (default {TOKENS_PER_SECOND:,} a second of a point)",
    )
    parser.add_argument(
        "--subscribers",
        type=int,
        default=100,
        help="WebSocket subscribers on the hot product (default 100, as bench.flash_sale)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60,
        help="seconds the whole run may spend waiting for other processes' CPU use to drop "
        "before a point (default 60)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH (apt-get install wrk)")
    raise_open_files_limit()
    series = ["unlimited", *(s for s in SERIES if s in args.series and s != "unlimited")]
    plan = Plan(
        seconds=args.seconds,
        warmup_seconds=2,
        service_clients=tuple(args.clients),
        subscribers=args.subscribers,
        quiet_wait=args.quiet_wait,
    )
    count = args.tokens or TOKENS_PER_SECOND * args.seconds
    result = uvloop.run(run(plan, args.rounds, args.clients, series, args.limit, count))
    print_limits_ab(result)
    print(f"\nsaved {save('limits_ab', result)}")
    exit_unless_ok(result, "a verdict failed or a point could not be measured")


if __name__ == "__main__":
    main()

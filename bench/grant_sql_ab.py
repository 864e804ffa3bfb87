"""grant_singles in SQL alone: what a drop's batch costs next to an anonymous one, with
migration 006's function and with today's, side by side on one database.

    python -m bench.grant_sql_ab                  # 8 rounds of 100 batches a series
    python -m bench.grant_sql_ab --rounds 12 --batches 200 --holds 0

No service, no HTTP: the statement the coalescer sends (SELECT * FROM grant_singles(...),
self-committing), from one connection per series to one PostgreSQL server (embedded, or
BENCH_DATABASE_URL's) and a fresh database migrated by this checkout. 006's function is
created beside today's as grant_singles_006 (its text read from the 006 migration), so
both see the same tables. Before measuring, --holds earlier holds of other buyers on
another product (default 100,000) so the buyer index is not a young one's.

Series, each on a hot product of its own with stock that never runs out, every batch
single-unit requests (--sizes, default 8 and 32), every request granted:

- lean: anonymous requests, no purchase limit (the statement on the stock alone);
- buyers: another buyer per request, no limit;
- limited: another buyer per request, a limit of 1 (a drop).

Per round, the batches of every series (both functions, both sizes) interleaved in a
random order, so a shared machine's drift hits all alike. Timed per batch: the server
backend's CPU time (/proc/PID/schedstat, when the server is on this machine: far steadier
than wall time on a busy machine) and the wall time of the round trip. Commits are not
flushed (synchronous_commit off for these connections): the flush is the same for every
series and only adds noise. Printed per size and function: the median time of a lean
batch, then the medians of the per-round ratios of buyers and limited to lean (the
target: limited <= 1.1x lean), and of today's function to 006's per series.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import re
import statistics
import time
import uuid
from dataclasses import dataclass, field

import asyncpg

from bench.harness.database import postgres
from inventory_graphql.database import create_migrated_database, migrations

GRANT = "SELECT * FROM {function}($1, $2, $3, $4, $5, $6)"
FUNCTIONS = {"006": "grant_singles_006", "now": "grant_singles"}
KINDS = ("lean", "buyers", "limited")
STOCK = 1_000_000_000
TTL = 600.0

PRODUCT = """
WITH p AS (
    INSERT INTO product (sku, name, quantity, purchase_limit)
    VALUES ($1, 'grant_sql_ab', $2, $3) RETURNING id, quantity
)
INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reason)
SELECT id, 'CREATE', quantity, 0, 'bench' FROM p
"""


def function_006() -> str:
    """Migration 006's grant_singles, renamed: the function as it was before 007."""
    sql = next(m.sql for m in migrations() if m.version == 6)
    start = sql.index("CREATE FUNCTION grant_singles(")
    end = sql.index("END $$;", start) + len("END $$;")
    return re.sub(
        r"^CREATE FUNCTION grant_singles\(", "CREATE FUNCTION grant_singles_006(", sql[start:end]
    )


@dataclass
class Series:
    function: str
    size: int
    kind: str
    conn: asyncpg.Connection
    sku: str
    cpu: list[float] = field(default_factory=list)  # per round: seconds per batch
    wall: list[float] = field(default_factory=list)


def backend_cpu(pid: int) -> float | None:
    """Seconds of CPU the server process `pid` has run, if it runs on this machine."""
    try:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except OSError:
        return None


buyer_numbers = itertools.count()


async def batch(series: Series) -> tuple[float | None, float]:
    """One batch of the series' requests, all granted: (backend CPU, wall) seconds."""
    n = series.size
    buyers: list[str | None] = [None] * n
    if series.kind != "lean":
        buyers = [f"bench-buyer-{next(buyer_numbers)}" for _ in range(n)]
    args = ([series.sku] * n, [1] * n, [uuid.uuid4() for _ in range(n)], [TTL] * n, buyers, None)
    pid = series.conn.get_server_pid()
    cpu_before, wall_before = backend_cpu(pid), time.perf_counter()
    rows = await series.conn.fetch(GRANT.format(function=FUNCTIONS[series.function]), *args)
    wall = time.perf_counter() - wall_before
    cpu_after = backend_cpu(pid)
    assert len(rows) == n and all(r["created_at"] is not None for r in rows), rows
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return cpu, wall


async def earlier_holds(conn: asyncpg.Connection, count: int) -> None:
    """`count` holds of as many buyers on a product of their own, through grant_singles."""
    sku = f"grant-sql-ab-earlier-{uuid.uuid4().hex[:8]}"
    await conn.execute(PRODUCT, sku, STOCK, None)
    for start in range(0, count, 1000):
        n = min(1000, count - start)
        buyers = [f"bench-earlier-{start + i}" for i in range(n)]
        ids = [uuid.uuid4() for _ in range(n)]
        await conn.fetch(
            GRANT.format(function="grant_singles"),
            [sku] * n,
            [1] * n,
            ids,
            [3600.0] * n,
            buyers,
            None,
        )
    await conn.execute("ANALYZE")


async def run(args: argparse.Namespace) -> None:
    with postgres() as server:
        url = await create_migrated_database(server, "grant_sql_ab", replace=True)
        setup = await asyncpg.connect(url)
        await setup.execute(function_006())
        await earlier_holds(setup, args.holds)
        series = []
        for function in FUNCTIONS:
            for size in args.sizes:
                for kind in KINDS:
                    sku = f"grant-sql-ab-{kind}-{uuid.uuid4().hex[:8]}"
                    await setup.execute(PRODUCT, sku, STOCK, 1 if kind == "limited" else None)
                    conn = await asyncpg.connect(url, server_settings={"synchronous_commit": "off"})
                    series.append(Series(function, size, kind, conn, sku))
        await setup.close()
        for s in series:  # warm up: plans made, caches filled
            for _ in range(20):
                await batch(s)
        for _ in range(args.rounds):
            cpu = {id(s): 0.0 for s in series}
            wall = {id(s): 0.0 for s in series}
            for _ in range(args.batches):
                for s in random.sample(series, len(series)):
                    used, took = await batch(s)
                    cpu[id(s)] += used or 0.0
                    wall[id(s)] += took
            for s in series:
                s.cpu.append(cpu[id(s)] / args.batches)
                s.wall.append(wall[id(s)] / args.batches)
        for s in series:
            await s.conn.close()
    report(series, args)


def ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def report(series: list[Series], args: argparse.Namespace) -> None:
    find = {(s.function, s.size, s.kind): s for s in series}
    have_cpu = all(s.cpu[0] > 0 for s in series)
    measures = (["cpu"] if have_cpu else []) + ["wall"]
    print(f"{args.rounds} rounds of {args.batches} batches a series, {args.holds:,} earlier holds")
    for measure in measures:
        print(f"\n{measure}: medians of per-round ratios")
        for size in args.sizes:
            print(f"  batch of {size}")
            for function in FUNCTIONS:
                times = {k: getattr(find[(function, size, k)], measure) for k in KINDS}
                line = [f"    {function:4s} lean {statistics.median(times['lean']) * 1e3:.3f} ms"]
                line += [f"{k}/lean {ratio(times[k], times['lean']):.3f}" for k in KINDS[1:]]
                if function != "006":
                    line += [
                        f"{k} now/006 "
                        f"{ratio(times[k], getattr(find[('006', size, k)], measure)):.3f}"
                        for k in KINDS
                    ]
                print("  ".join(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batches", type=int, default=100, help="per series and round")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--holds", type=int, default=100_000, help="earlier holds, other buyers")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

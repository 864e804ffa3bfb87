"""One measurement point each: pgbench and the raw asyncpg loop (the database's ceiling),
the service driven by wrk (with its verdicts), and fan-out to WebSocket subscribers.

Every point gets products of its own (database.seed), waits for a quiet machine first,
and meters CPU per process group while it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from bench.harness.clients import Client, client
from bench.harness.cpu import cpu_meter, wait_until_quiet
from bench.harness.database import (
    Products,
    buyers,
    limit_purchases,
    put_back,
    run_check,
    seed,
    settled,
    stock,
)
from bench.harness.drivers.asyncpg_loop import POOL, run_loop
from bench.harness.drivers.pgbench import run_pgbench
from bench.harness.drivers.wrk import run_wrk
from bench.harness.plan import (
    ASYNCPG,
    ASYNCPG_FULL_POOL,
    LOADS,
    PGBENCH,
    SERIES_TAGS,
    SERVE_WORKERS,
    STATEMENT,
)
from bench.harness.results import (
    AsyncpgDetail,
    FanoutResult,
    PgbenchDetail,
    Point,
    Quiet,
    ServiceDetail,
    SubscribersRead,
)
from bench.harness.session import Bench
from bench.harness.stats import percentile
from inventory_graphql.inventory.catalog import ADJUST
from inventory_graphql.testing.server import ServerProcess


def serve(
    bench: Bench, env: Mapping[str, str], workers: int | None = SERVE_WORKERS
) -> ServerProcess:
    """`inventory-graphql serve --workers N` on the run's database, its output on ours;
    without `workers`, no --workers: serve's default (one worker per core).

    Started now; `with` waits until it is ready and stops it at the end. Which version
    runs is up to PYTHONPATH (in `env`, else this process's).
    """
    env = {"DATABASE_URL": bench.url, **env}
    return ServerProcess(env, inherit_output=True, workers=workers)


# ---------------------------------------------------------------- the ceiling


async def pgbench_point(
    bench: Bench, series: str, load: str, clients: int, listener: Client
) -> Point[PgbenchDetail]:
    """pgbench running the design's statement on random products of the load; their
    stock is put back afterwards (pgbench holds without ledger rows)."""
    tag = "pgbench" if series == PGBENCH else "pgbench-notify-off"
    products = await seed(bench.conn, f"{tag}.{load}.{clients}", LOADS[load])
    script = bench.workdir / f"{products.prefix}.sql"
    statement = STATEMENT.format(id=":id")
    script.write_text(f"\\set id random({products.first_id}, {products.last_id})\n{statement};\n")
    log_prefix = bench.workdir / f"log-{products.prefix}"
    quiet = await wait_until_quiet(bench.quiet, {"listener": listener.pid})
    run = await run_pgbench(
        bench.url, script, clients, bench.plan.seconds, log_prefix, {"listener": listener.pid}
    )
    consumed = await put_back(bench.conn, products)
    return Point(
        series,
        load,
        clients,
        run.tps,
        percentile(run.latencies_ms, 50),
        percentile(run.latencies_ms, 99),
        run.cpu,
        PgbenchDetail(run.tps, run.processed, run.failed, consumed, quiet),
    )


async def asyncpg_point(
    bench: Bench, series: str, load: str, tasks: int, listener: Client
) -> Point[AsyncpgDetail]:
    """The same statement from a raw asyncpg loop in this process, on a pool of POOL
    connections (ASYNCPG) or of one per task (ASYNCPG_FULL_POOL); stock put back."""
    pool = {ASYNCPG: POOL, ASYNCPG_FULL_POOL: tasks}[series]
    tag = "asyncpg" if series == ASYNCPG else "asyncpg-full-pool"
    products = await seed(bench.conn, f"{tag}.{load}.{tasks}", LOADS[load])
    ids = list(range(products.first_id, products.last_id + 1))
    statement = STATEMENT.format(id="$1")
    quiet = await wait_until_quiet(bench.quiet, {"listener": listener.pid})
    run = await run_loop(
        bench.url, statement, ids, tasks, pool, bench.plan.seconds, {"listener": listener.pid}
    )
    consumed = await put_back(bench.conn, products)
    return Point(
        series,
        load,
        tasks,
        run.reserved / run.elapsed,
        percentile(run.latencies_ms, 50),
        percentile(run.latencies_ms, 99),
        run.cpu,
        AsyncpgDetail(run.reserved, consumed, pool, quiet),
    )


# ---------------------------------------------------------------- the service


async def service_point(
    bench: Bench,
    series: str,
    server: ServerProcess,
    load: str,
    clients: int,
    live: bool,
    repeat: int = 0,
    beside: Callable[[Products], AbstractAsyncContextManager[Client]] | None = None,
    tokens: Sequence[str] = (),
    purchase_limit: int | None = None,
    subscriber_niceness: int = 0,
) -> Point[ServiceDetail]:
    """wrk against `server` (with bench.plan.subscribers subscribers on the point's first
    product if `live`, and the client process `beside` makes for the point's products
    running alongside, if given), then the verdicts once in-flight requests have settled.

    With `tokens`, every request is another buyer's (the next token); with
    `purchase_limit`, the point's products have that limit per buyer, and the verdicts
    include that nobody holds above it. The subscribers' process runs at
    `subscriber_niceness`."""
    tag = SERIES_TAGS.get(series, series)
    suffix = f".{repeat}" if repeat else ""
    products = await seed(bench.conn, f"{tag}.{load}.{clients}{suffix}", LOADS[load])
    if purchase_limit is not None:
        await limit_purchases(bench.conn, products, purchase_limit)
    pids = {"server": server.process.pid}
    quiet = await wait_until_quiet(bench.quiet, pids)
    subscribed: SubscribersRead | None = None
    async with contextlib.AsyncExitStack() as stack:
        subscribers: Client | None = None
        if live:
            subscribers = await stack.enter_async_context(
                client(
                    "subscribe",
                    server.url,
                    products.first_sku,
                    str(bench.plan.subscribers),
                    niceness=subscriber_niceness,
                )
            )
            pids["subscribers"] = subscribers.pid
        alongside = None
        if beside is not None:
            alongside = await stack.enter_async_context(beside(products))
            pids["alongside"] = alongside.pid
        wrk, cpu = await run_wrk(server.url, products, clients, bench.plan.seconds, pids, tokens)
        besides = await alongside.finish() if alongside is not None else None
        # Requests wrk cut off still commit and notify: let them, then stop reading.
        consumed = await settled(bench.conn, products)
        if subscribers is not None:
            subscribed = SubscribersRead(**await subscribers.finish())
    held = await stock(bench.conn, products)
    check = await run_check(bench.url)
    counted, unanswered = wrk.reservations, wrk.sent - wrk.received
    verdicts = {
        "within_stock": held.oversold_products == 0,
        "answers_match_stock": counted <= consumed <= counted + unanswered,
        # BUSY is the bounded wait's answer (the per-request path at 1,024 clients on one
        # row); it says nothing is held, which answers_match_stock holds it to.
        "only_reservations_or_busy": wrk.other == 0,
        "check": check.ok,
    }
    holders = None
    if tokens or purchase_limit is not None:
        holders = await buyers(bench.conn, products, purchase_limit)
        verdicts["within_limit"] = holders.above_limit == 0
    if tokens:
        # Every request was another buyer's: one hold each, none anonymous.
        verdicts["a_buyer_per_request"] = wrk.buyers_reused == 0 and (
            holders is not None and holders.holds == holders.buyers and not holders.anonymous_holds
        )
    seconds = wrk.duration_us / 1e6
    return Point(
        series,
        load,
        clients,
        wrk.reservations / seconds,
        wrk.p50_us / 1000,
        wrk.p99_us / 1000,
        cpu,
        ServiceDetail(
            wrk=wrk,
            subscribers=subscribed,
            quiet=quiet,
            consumed=consumed,
            counted=counted,
            unanswered_at_stop=unanswered,
            committed_unanswered=consumed - counted,
            held_by_reservations=held.held,
            check=check,
            alongside=besides,
            buyers=holders,
        ),
        verdicts,
    )


async def warm_up(bench: Bench, server: ServerProcess, name: str) -> None:
    """Parse caches, prepared statements and the pool filled before the first point."""
    products = await seed(bench.conn, f"warmup.{name}", 1)
    seconds = bench.plan.warmup_seconds
    await run_wrk(server.url, products, 64, seconds, {"server": server.process.pid})


# ---------------------------------------------------------------- fan-out


def split(total: int, most: int) -> list[int]:
    """`total` in as few parts of at most `most` as can be, as even as can be."""
    parts = math.ceil(total / most)
    return [total // parts + (i < total % parts) for i in range(parts)]


async def fanout_point(
    bench: Bench, server: ServerProcess, subscribers: int, repeat: int = 0, adjust: str = ADJUST
) -> FanoutResult:
    """bench.plan.fanout_changes changes to one product, each delivered to `subscribers`
    WebSocket subscribers in client processes of at most plan.subscribers_per_process.
    `adjust` changes the stock ($1 sku, $2 delta, $3 reason; returns the new `version`)."""
    suffix = f".{repeat}" if repeat else ""
    products = await seed(bench.conn, f"fanout.{subscribers}{suffix}", 1)
    sizes = split(subscribers, bench.plan.subscribers_per_process)
    changes = bench.plan.fanout_changes
    committed: dict[int, float] = {}
    pids = {"server": server.process.pid}
    quiet = await wait_until_quiet(bench.quiet, pids)
    async with contextlib.AsyncExitStack() as stack:
        # Connect the client processes side by side: 5,000 handshakes take a while.
        clients = await asyncio.gather(
            *(
                stack.enter_async_context(
                    client("fanout", server.url, products.first_sku, str(size), str(changes))
                )
                for size in sizes
            )
        )
        pids |= {f"subscribers {i + 1}": c.pid for i, c in enumerate(clients)}
        measuring = time.perf_counter()
        async with cpu_meter(pids) as cpu:
            for _ in range(changes):
                started = time.time()
                row = await bench.conn.fetchrow(adjust, products.first_sku, 1, "bench fan-out")
                assert row is not None, "the fan-out product is gone"
                committed[row["version"]] = started
                await asyncio.gather(*(c.expect(f"got {row['version']}", 120) for c in clients))
                await asyncio.sleep(0.1)  # let the server go idle between changes
        measured = time.perf_counter() - measuring
        results = [await c.finish() for c in clients]
    return fanout_result(subscribers, sizes, committed, results, cpu, measured, quiet)


def fanout_result(
    subscribers: int,
    sizes: list[int],
    committed: dict[int, float],
    results: list[dict[str, Any]],
    cpu: dict[str, float],
    measured: float,
    quiet: Quiet,
) -> FanoutResult:
    """Delays from each change's commit to each arrival the client processes recorded."""
    delays: list[float] = []
    last_per_change: dict[int, float] = {}
    for result in results:
        for version, arrivals in result["arrivals"].items():
            ms = [(t - committed[int(version)]) * 1000 for t in arrivals]
            delays.extend(ms)
            last_per_change[int(version)] = max(last_per_change.get(int(version), 0.0), *ms)
    # Server CPU per delivered message: what fan-out costs, whatever the machine's noise.
    per_message = cpu.get("server", 0.0) * measured / max(1, len(delays)) * 1e6
    return FanoutResult(
        subscribers=subscribers,
        processes=len(sizes),
        changes=len(committed),
        deliveries=len(delays),
        p50_ms=percentile(delays, 50),
        p99_ms=percentile(delays, 99),
        max_ms=max(delays),
        all_delivered_p50_ms=percentile(list(last_per_change.values()), 50),
        all_delivered_ms=[round(last_per_change[v]) for v in sorted(last_per_change)],
        server_us_per_message=round(per_message, 1),
        cpu=cpu,
        quiet=quiet,
    )

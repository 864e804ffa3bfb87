"""What live availability costs and how fast it is (issue: live availability).

1. Reservation throughput through the service with the NOTIFY trigger on versus off, in
   one run on one database, on one hot product and spread over 10,000 products, with a
   process LISTENing. Rounds alternate on/off so drift on a shared machine hits both.
2. Delay from commit to delivery of one change to 1,000 WebSocket subscribers of a real
   server process (p50, p99), measured in the subscribers' process.

    python -m bench.live_updates [--seconds 5] [--subscribers 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import asyncpg

from bench.common import machine, median, percentile, postgres, save, server_process
from inventory_graphql.config import Settings
from inventory_graphql.database import create_migrated_database
from inventory_graphql.inventory.catalog import ADJUST
from inventory_graphql.inventory.models import LineRequest, Reservation
from inventory_graphql.inventory.service import InventoryService
from inventory_graphql.testing.graphql_ws import AVAILABILITY, GraphQLWebSocket

SPREAD = 10_000
TRIGGER = "product_notify_availability"


async def seed(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        WITH p AS (
            INSERT INTO product (sku, name, quantity)
            SELECT 'B-' || i, 'bench product ' || i, 100000000 FROM generate_series(0, $1) i
            RETURNING id, quantity
        )
        INSERT INTO stock_movement (product_id, kind, quantity_delta, reserved_delta, reason)
        SELECT id, 'CREATE', quantity, 0, 'bench' FROM p
        """,
        SPREAD,
    )


async def reserve_rate(
    service: InventoryService, skus: list[str], concurrency: int, seconds: float
) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def shopper(i: int) -> None:
        nonlocal done
        n = i
        while time.perf_counter() < stop:
            sku = skus[n % len(skus)]
            n += concurrency
            outcome = await service.reserve([LineRequest(sku, 1)], ttl_seconds=3600)
            assert isinstance(outcome, Reservation), outcome
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(shopper(i) for i in range(concurrency)))
    return done / (time.perf_counter() - start)


async def trigger_cost(url: str, seconds: float, concurrency: int, rounds: int) -> dict:
    pool = await asyncpg.create_pool(url, min_size=8, max_size=8)
    service = InventoryService.from_pool(pool, Settings())
    listener = await asyncpg.connect(url)
    heard = 0

    def count(*_: object) -> None:
        nonlocal heard
        heard += 1

    await listener.add_listener("inventory_availability", count)
    loads = {"hot": ["B-0"], "spread": [f"B-{i}" for i in range(1, SPREAD + 1)]}
    rates: dict[str, dict[str, list[float]]] = {k: {"on": [], "off": []} for k in loads}
    try:
        for _ in range(rounds):
            for state in ("on", "off"):
                action = "ENABLE" if state == "on" else "DISABLE"
                await listener.execute(f"ALTER TABLE product {action} TRIGGER {TRIGGER}")
                for load, skus in loads.items():
                    rate = await reserve_rate(service, skus, concurrency, seconds)
                    rates[load][state].append(rate)
                    print(f"  trigger {state:3} {load:6} {rate:8.0f} reservations/s", flush=True)
        await listener.execute(f"ALTER TABLE product ENABLE TRIGGER {TRIGGER}")
    finally:
        await listener.close()
        await pool.close()
    summary = {}
    for load, by_state in rates.items():
        on, off = median(by_state["on"]), median(by_state["off"])
        summary[load] = {"on": on, "off": off, "ratio_on_off": on / off, "rounds": by_state}
    summary["notifications_heard"] = heard
    return summary


async def fanout_delay(server_url: str, db_url: str, subscribers: int, changes: int) -> dict:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets = await asyncio.gather(
            *(GraphQLWebSocket.connect(session, server_url) for _ in range(subscribers))
        )
        subs = [await ws.subscribe(AVAILABILITY, skus=["B-0"]) for ws in sockets]
        await asyncio.gather(*(sub.next() for sub in subs))  # snapshots
        conn = await asyncpg.connect(db_url)
        delays: list[float] = []
        try:
            for _ in range(changes):
                waiting = [asyncio.create_task(sub.next(timeout=30)) for sub in subs]
                started = time.perf_counter()
                await conn.execute(ADJUST, "B-0", 1, "bench fan-out")
                arrived: list[float] = []
                for task in waiting:
                    task.add_done_callback(lambda _, a=arrived: a.append(time.perf_counter()))
                await asyncio.gather(*waiting)
                delays.extend((t - started) * 1000 for t in arrived)
                await asyncio.sleep(0.1)
        finally:
            await conn.close()
            for ws in sockets:
                await ws.close()
    return {
        "subscribers": subscribers,
        "changes": changes,
        "p50_ms": percentile(delays, 50),
        "p99_ms": percentile(delays, 99),
        "max_ms": max(delays),
    }


async def main_async(args: argparse.Namespace) -> dict:
    with postgres() as server:
        url = await create_migrated_database(server, "inventory_bench_live", replace=True)
        conn = await asyncpg.connect(url)
        await seed(conn)
        await conn.close()
        print("reservation throughput, NOTIFY trigger on vs off:", flush=True)
        trigger = await trigger_cost(url, args.seconds, args.concurrency, args.rounds)
        print(f"fan-out to {args.subscribers} subscribers:", flush=True)
        with server_process(url) as server_url:
            fanout = await fanout_delay(server_url, url, args.subscribers, args.changes)
    return {"machine": machine(), "trigger": trigger, "fanout": fanout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=20)
    result = asyncio.run(main_async(parser.parse_args()))
    for load in ("hot", "spread"):
        t = result["trigger"][load]
        print(
            f"{load:6}: trigger on {t['on']:.0f}/s, off {t['off']:.0f}/s, "
            f"ratio {t['ratio_on_off']:.2f}"
        )
    f = result["fanout"]
    print(f"fan-out to {f['subscribers']}: p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms")
    print(f"saved {save('live_updates', result)}")


if __name__ == "__main__":
    main()

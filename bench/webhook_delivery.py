"""What webhook delivery costs: one server delivering the stock event feed to one endpoint.

    python -m bench.webhook_delivery                  # 800 events/s live, then a backlog
    python -m bench.webhook_delivery --rate 1200 --batch 8 --backlog 50000

No HTTP load: events are made by grant_singles straight in SQL (batches of --batch on one
product), so the server's CPU is delivery's (plus the availability notifications every
grant sends). One PostgreSQL (embedded, or BENCH_DATABASE_URL's) and a fresh database;
the receiver is bench.harness.webhook_receiver, which verifies every signature.

- live: events made at --rate for --seconds while the server delivers; then wait until
  delivery caught up. Printed: events per message, server and receiver CPU per event and
  as a share of a core.
- backlog: --backlog events made with the server stopped, then one server started:
  delivery rate and CPU per event.

Exit 1 if the receiver did not get every event once, in feed order, signatures valid.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import asyncpg
import psutil

from bench.harness import webhooks
from bench.harness.database import postgres
from inventory_graphql.database import create_migrated_database
from inventory_graphql.testing.server import ServerProcess

ADMIN = "bench-webhook-delivery-admin-token"
GRANT = "SELECT * FROM grant_singles($1, $2, $3, $4, $5, NULL)"


def cpu_seconds(pid: int) -> float:
    process = psutil.Process(pid)
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        total += sum(child.cpu_times()[:2])
    return float(total)


def receiver_pid() -> int:
    for p in psutil.process_iter(["cmdline"]):
        if "bench.harness.webhook_receiver" in " ".join(p.info["cmdline"] or []):
            return int(p.pid)
    raise RuntimeError("no webhook receiver process")


async def grant(conn: asyncpg.Connection, batch: int) -> None:
    ids = [uuid.uuid4() for _ in range(batch)]
    await conn.fetch(GRANT, ["HOT"] * batch, [1] * batch, ids, [600.0] * batch, [None] * batch)


def report(
    name: str, made: int, seconds: float, delivered: dict[str, Any], cpu: dict[str, float]
) -> None:
    messages = max(1, int(delivered["messages"]))
    print(
        f"{name}: {made} events in {seconds:.1f} s ({made / seconds:,.0f}/s), "
        f"{made / messages:.1f} events a message; "
        + "; ".join(
            f"{who} {used / seconds * 100:.0f}% of a core ({used / made * 1e6:.0f} us an event)"
            for who, used in cpu.items()
        ),
        flush=True,
    )


async def run(args: argparse.Namespace, server_url: str) -> bool:
    url = await create_migrated_database(server_url, "inventory_bench_webhooks", replace=True)
    conn = await asyncpg.connect(url)
    ok = True
    try:
        await conn.execute(
            "INSERT INTO product (sku, name, quantity) VALUES ('HOT', 'hot', 1000000000)"
        )
        with webhooks.receiver() as receiver_url:
            env = {
                "DATABASE_URL": url,
                "INVENTORY_ADMIN_TOKEN": ADMIN,
                **webhooks.server_env(receiver_url),
            }
            receiver = receiver_pid()
            # Live.
            with ServerProcess(env) as server:
                endpoint = await webhooks.subscribe(conn, server.url, ADMIN, receiver_url)
                await asyncio.sleep(1)
                start = {
                    "server": cpu_seconds(server.process.pid),
                    "receiver": cpu_seconds(receiver),
                }
                began, made = time.monotonic(), 0
                while time.monotonic() - began < args.seconds:
                    await grant(conn, args.batch)
                    made += args.batch
                    ahead = made / args.rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                delivered = await webhooks.caught_up(conn, endpoint, timeout=120)
                seconds = time.monotonic() - began
                cpu = {
                    "server": cpu_seconds(server.process.pid) - start["server"],
                    "receiver": cpu_seconds(receiver) - start["receiver"],
                }
            report("live", made, seconds, delivered, cpu)
            ok = ok and webhooks.complete(delivered)
            # Backlog: made with no server running, then delivered by one.
            before = delivered
            for _ in range(args.backlog // 100):
                await grant(conn, 100)
            made = args.backlog // 100 * 100
            start = {"receiver": cpu_seconds(receiver)}
            with ServerProcess(env) as server:
                start["server"] = cpu_seconds(server.process.pid)
                began = time.monotonic()
                delivered = await webhooks.caught_up(conn, endpoint, timeout=300)
                seconds = time.monotonic() - began
                cpu = {
                    "server": cpu_seconds(server.process.pid) - start["server"],
                    "receiver": cpu_seconds(receiver) - start["receiver"],
                }
            added = {**delivered, "messages": delivered["messages"] - before["messages"]}
            report("backlog", made, seconds, added, cpu)
            ok = ok and webhooks.complete(delivered)
    finally:
        await conn.close()
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=800, help="events/s made live (800)")
    parser.add_argument("--batch", type=int, default=4, help="events per grant statement (4)")
    parser.add_argument("--seconds", type=float, default=10, help="live seconds (10)")
    parser.add_argument("--backlog", type=int, default=30000, help="backlog events (30,000)")
    args = parser.parse_args()
    with postgres() as server:
        ok = asyncio.run(run(args, server))
    if not ok:
        raise SystemExit("the receiver did not get every event once, in order, signed")


if __name__ == "__main__":
    main()

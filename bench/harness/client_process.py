"""The program of the benchmarks' client processes (bench.harness.clients starts them).

    python -m bench.harness.client_process listen DATABASE_URL
    python -m bench.harness.client_process subscribe SERVER_URL SKU SUBSCRIBERS
    python -m bench.harness.client_process fanout SERVER_URL SKU SUBSCRIBERS CHANGES
    python -m bench.harness.client_process attack KIND SERVER_URL CONNECTIONS ARGUMENT

Each prints `ready` once set up and `result` as its last line, once it has written its
result (JSON) to the file named by BENCH_RESULT_FILE:

- listen: LISTENs on the availability channel (as every server process does in
  production) until stdin closes; result: notifications heard.
- subscribe: SUBSCRIBERS WebSockets subscribed to SKU, reading every update until stdin
  closes; result: updates read.
- fanout: SUBSCRIBERS WebSockets subscribed to SKU; for each of CHANGES changes prints
  `got VERSION` once every subscriber has it; result: arrival times (time.time(), so the
  changer in another process can subtract its commit times) per version.
- attack: one of bench.harness.attacks' attackers (KIND: cost or poison, ARGUMENT a file
  holding the request body; churn or subscriptions, ARGUMENT the sku), from 127.0.0.2,
  until stdin closes; result: answers counted by kind.

It imports no other harness module but attacks (itself self-contained): only the
service's own package (garbage collection tuning, the graphql-transport-ws client in
inventory_graphql.testing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uvloop

from bench.harness import attacks
from inventory_graphql import garbage_collection
from inventory_graphql.live.channel import CHANNEL
from inventory_graphql.testing.graphql_ws import AVAILABILITY, GraphQLWebSocket, Subscription

CONNECTING_AT_ONCE = 100  # more handshakes at once only overflow the accept backlog


async def close_all(pairs: list[tuple[GraphQLWebSocket, Subscription]]) -> None:
    # Complete first and give the server a moment to stop its operations: an update it
    # sends to a socket already closing is logged as an error on the server.
    for _, sub in pairs:
        with contextlib.suppress(Exception):
            await sub.complete()
    await asyncio.sleep(1)
    for ws, _ in pairs:
        with contextlib.suppress(Exception):
            await ws.close()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def stdin_closed() -> None:
    await asyncio.to_thread(sys.stdin.read)


async def listen(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    heard = 0

    def count(*_: object) -> None:
        nonlocal heard
        heard += 1

    await conn.add_listener(CHANNEL, count)
    say("ready")
    await stdin_closed()
    await conn.close()
    return {"notifications": heard}


async def open_subscriptions(
    session: aiohttp.ClientSession, server_url: str, sku: str, count: int
) -> list[tuple[GraphQLWebSocket, Subscription]]:
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    # Every subscriber is a shopper of its own, as behind a load balancer (the server
    # trusts 127.0.0.1 as a proxy): the per-client limits see a crowd, not one client.
    shoppers = (f"10.{os.getpid() % 250 + 1}.{i // 256}.{i % 256}" for i in range(count))

    async def one() -> tuple[GraphQLWebSocket, Subscription]:
        async with gate:
            forwarded = {"X-Forwarded-For": next(shoppers)}
            ws = await GraphQLWebSocket.connect(session, server_url, headers=forwarded)
            sub = await ws.subscribe(AVAILABILITY, skus=[sku])
            await sub.next(timeout=120)  # the snapshot
            return ws, sub

    pairs = await asyncio.gather(*(one() for _ in range(count)))
    # The clients measure the server: keep their own full collections (a quarter of a
    # second at 1,250 sockets) out of the delays, as the server does.
    garbage_collection.tune()
    return pairs


async def subscribe(server_url: str, sku: str, count: int) -> dict[str, int]:
    read = 0

    async def reader(sub: Subscription) -> None:
        nonlocal read
        async for _ in sub.updates(timeout=3600):
            read += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        pairs = await open_subscriptions(session, server_url, sku, count)
        readers = [asyncio.create_task(reader(sub)) for _, sub in pairs]
        say("ready")
        await stdin_closed()
        failed = [t for t in readers if t.done() and t.exception()]  # before we cancel them
        for task in readers:
            task.cancel()
        await close_all(pairs)
    return {"subscribers": count, "updates_read": read, "readers_failed": len(failed)}


async def fanout(
    server_url: str, sku: str, count: int, changes: int
) -> dict[str, dict[int, list[float]]]:
    arrivals: dict[int, list[float]] = defaultdict(list)

    async def reader(sub: Subscription) -> None:
        for _ in range(changes):
            update = (await sub.next(timeout=120))["availability"]
            arrivals[update["version"]].append(time.time())
            if len(arrivals[update["version"]]) == count:
                say(f"got {update['version']}")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        pairs = await open_subscriptions(session, server_url, sku, count)
        say("ready")
        await asyncio.gather(*(reader(sub) for _, sub in pairs))
        await close_all(pairs)
    return {"arrivals": arrivals}


async def attack(kind: str, server_url: str, connections: int, argument: str) -> object:
    stop = asyncio.Event()
    source = attacks.ATTACKER_ADDRESS
    if kind in ("cost", "poison"):
        body = await asyncio.to_thread(Path(argument).read_bytes)
        running = asyncio.create_task(
            attacks.post_loop(server_url, source, connections, body, stop)
        )
    elif kind == "churn":
        running = asyncio.create_task(
            attacks.churn(server_url, source, connections, argument, stop)
        )
    elif kind == "subscriptions":
        opened = asyncio.Event()
        running = asyncio.create_task(
            attacks.hold_subscriptions(server_url, source, connections, argument, stop, opened)
        )
        await opened.wait()
    else:
        raise SystemExit(f"unknown attack {kind}")
    say("ready")
    await stdin_closed()
    stop.set()
    return await running


def main() -> None:
    mode, *args = sys.argv[1:]
    run: Coroutine[Any, Any, object]
    if mode == "listen":
        run = listen(args[0])
    elif mode == "subscribe":
        run = subscribe(args[0], args[1], int(args[2]))
    elif mode == "fanout":
        run = fanout(args[0], args[1], int(args[2]), int(args[3]))
    elif mode == "attack":
        run = attack(args[0], args[1], int(args[2]), args[3])
    else:
        raise SystemExit(f"unknown mode {mode}")
    result = json.dumps(uvloop.run(run))
    # A fan-out result is hundreds of KiB: through a file, not one line on a pipe (such
    # lines arrived cut at 256 KiB now and then).
    Path(os.environ["BENCH_RESULT_FILE"]).write_text(result)
    say("result")


if __name__ == "__main__":
    main()

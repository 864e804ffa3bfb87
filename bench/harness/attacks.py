"""The attackers of bench.hostile, run in client processes (client_process `attack`).

Each attack loops until `stop` is set and counts what came back, by kind: "ok" for an
answer with data and no errors, else the first error's `extensions.code` (or the HTTP
status, or the exception's name). Attackers connect from their own loopback address
(127.0.0.2 by default), so per-client limits see them as one client apart from the
shoppers on 127.0.0.1.

- cost: CONNECTIONS loops POSTing one document (the costliest the limits allow).
- poison: CONNECTIONS loops POSTing a 100-line cart whose last line can never fit.
- churn: CONNECTIONS WebSockets, each looping subscribe, wait for the first message,
  complete.
- subscriptions: as many subscriptions as CONNECTIONS sockets x 16 can carry, opened and
  then held (reading updates) until stop; counts how many the server accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from typing import Any

import aiohttp

from inventory_graphql.testing.graphql_ws import (
    AVAILABILITY,
    GraphQLWebSocket,
    Subscription,
    SubscriptionError,
)

ATTACKER_ADDRESS = "127.0.0.2"
PER_SOCKET = 16  # the server's default INVENTORY_MAX_SUBSCRIPTIONS_PER_CONNECTION


def kind_of(status: int, body: bytes) -> str:
    try:
        answer = json.loads(body)
    except ValueError:
        return f"http {status}"
    errors = answer.get("errors") if isinstance(answer, dict) else None
    if errors:
        code = (errors[0].get("extensions") or {}).get("code")
        return str(code or errors[0].get("message", "error"))[:60]
    if status != 200:
        return f"http {status}"
    data = answer.get("data") or {}
    # A reserve's expected failures are union members, not errors: name the member.
    reserve = data.get("reserve") if isinstance(data, dict) else None
    if isinstance(reserve, dict) and "__typename" in reserve:
        return str(reserve["__typename"])
    return "ok"


def session(local_addr: str, limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, local_addr=(local_addr, 0))
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


async def post_loop(
    server_url: str, local_addr: str, connections: int, body: bytes, stop: asyncio.Event
) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    headers = {"content-type": "application/json"}

    async def loop(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with http.post(f"{server_url}/graphql", data=body, headers=headers) as r:
                    counts[kind_of(r.status, await r.read())] += 1
            except (TimeoutError, aiohttp.ClientError) as error:
                counts[type(error).__name__] += 1
                await asyncio.sleep(0.05)

    async with session(local_addr, connections) as http:
        await asyncio.gather(*(loop(http) for _ in range(connections)))
    return {"answers": dict(counts)}


async def churn(
    server_url: str, local_addr: str, connections: int, sku: str, stop: asyncio.Event
) -> dict[str, Any]:
    counts: Counter[str] = Counter()

    async def loop(http: aiohttp.ClientSession) -> None:
        try:
            ws = await GraphQLWebSocket.connect(http, server_url)
        except (TimeoutError, aiohttp.ClientError, AssertionError) as error:
            counts[f"connect {type(error).__name__}"] += 1
            return
        try:
            while not stop.is_set():
                sub = await ws.subscribe(AVAILABILITY, skus=[sku])
                counts[await first_answer(sub)] += 1
                await sub.complete()
        except ConnectionError:
            counts["closed"] += 1
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async with session(local_addr, 0) as http:
        await asyncio.gather(*(loop(http) for _ in range(connections)))
    return {"answers": dict(counts)}


async def first_answer(sub: Subscription) -> str:
    try:
        await sub.next(timeout=30)
    except SubscriptionError as error:
        return str((error.errors[0].get("extensions") or {}).get("code", "error"))
    except TimeoutError:
        return "timeout"
    return "ok"


async def hold_subscriptions(
    server_url: str,
    local_addr: str,
    connections: int,
    sku: str,
    stop: asyncio.Event,
    opened: asyncio.Event,
) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    updates = 0

    async def reader(sub: Subscription) -> None:
        nonlocal updates
        with contextlib.suppress(Exception):
            async for _ in sub.updates(timeout=3600):
                updates += 1

    async def one_socket(http: aiohttp.ClientSession) -> list[asyncio.Task[None]]:
        try:
            ws = await GraphQLWebSocket.connect(http, server_url)
        except (TimeoutError, aiohttp.ClientError, AssertionError) as error:
            counts[f"connect {type(error).__name__}"] += PER_SOCKET
            return []
        readers = []
        for _ in range(PER_SOCKET):
            sub = await ws.subscribe(AVAILABILITY, skus=[sku])
            answer = await first_answer(sub)
            counts[answer] += 1
            if answer == "ok":
                readers.append(asyncio.create_task(reader(sub)))
        return readers

    async with session(local_addr, 0) as http:
        opening = await asyncio.gather(*(one_socket(http) for _ in range(connections)))
        readers = [task for tasks in opening for task in tasks]
        opened.set()
        await stop.wait()
        for task in readers:
            task.cancel()
    return {"answers": dict(counts), "updates_read": updates}

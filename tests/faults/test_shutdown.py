"""SIGTERM under load: requests finish or fail cleanly, sockets close properly, nothing lost."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from inventory_graphql.testing.graphql_ws import AVAILABILITY, GraphQLWebSocket
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RESERVE
from tests.support.database import check, stock
from tests.support.graphql_http import SERVER_ENV


async def test_sigterm_under_load_is_graceful(database_url, db, make_product, tmp_path):
    sku = await make_product(10_000)
    server = ServerProcess({"DATABASE_URL": database_url, **SERVER_ENV}, log=tmp_path / "log")
    await asyncio.to_thread(server.wait_ready)
    outcomes: Counter[str] = Counter()
    held = 0

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        socket = await GraphQLWebSocket.connect(session, server.url)
        sub = await socket.subscribe(AVAILABILITY, skus=[sku])
        await sub.next()

        async def shopper() -> None:
            nonlocal held
            body = {"query": RESERVE, "variables": {"lines": [{"sku": sku, "quantity": 1}]}}
            for _ in range(200):
                try:
                    async with session.post(f"{server.url}/graphql", json=body) as response:
                        answer = await response.json()
                except aiohttp.ClientConnectionError:
                    outcomes["refused after shutdown began"] += 1
                    return
                # Anything that got an answer got a whole one.
                kind = answer["data"]["reserve"]["__typename"]
                outcomes[kind] += 1
                held += kind == "Reservation"

        load = [asyncio.create_task(shopper()) for _ in range(32)]
        while outcomes["Reservation"] < 50:
            await asyncio.sleep(0.01)
        server.process.terminate()  # SIGTERM
        await asyncio.gather(*load)
        # The subscriber's socket is closed with a proper close code, not dropped.
        while not socket.ws.closed:
            await asyncio.sleep(0.05)
        assert socket.ws.close_code in (1000, 1001, 1012), socket.ws.close_code

    assert await asyncio.to_thread(server.process.wait, 20) == 0
    assert set(outcomes) <= {"Reservation", "refused after shutdown began"}, outcomes
    # Every answered reservation is held, and nothing else is.
    assert (await stock(db, sku))["reserved"] == held
    assert (await check(db)).ok

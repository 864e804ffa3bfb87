"""The client examples in examples/ run against a real server, and what they print is what
the database holds: the Node graphql-ws client (live availability, a reserve over HTTP)
and the Python gql checkout (reserve with an idempotency key, one retry, confirm)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from inventory_graphql.testing.server import ServerProcess, free_port
from tests.support.database import stock
from tests.support.node import npm_installed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NODE_LIVE = EXAMPLES / "node-live"


async def run(*args: str, timeout: float = 60) -> tuple[int, list[dict[str, Any]], str]:
    """Run a command without blocking the loop (a proxy in this process may serve it):
    its exit code, the JSON lines it printed, and its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        raise
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    return proc.returncode or 0, lines, err.decode()


def events(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["event"] == kind]


async def reservation(db: asyncpg.Connection, reservation_id: str) -> dict[str, Any]:
    row = await db.fetchrow(
        "SELECT r.status::text AS status, r.idempotency_key AS key, "
        "array_agg(p.sku || ':' || l.quantity) AS lines "
        "FROM reservation r JOIN reservation_line l ON l.reservation_id = r.id "
        "JOIN product p ON p.id = l.product_id WHERE r.id = $1 GROUP BY r.id",
        reservation_id,
    )
    return dict(row) if row else {}


# The Node client.


@pytest.fixture(scope="module")
def node_live() -> Path:
    """examples/node-live with its pinned packages installed (npm ci, from the cache when
    it can)."""
    npm_installed(NODE_LIVE, "the Node example")
    return NODE_LIVE / "live.mjs"


async def test_the_node_client_sees_its_own_reserve_in_live_availability(
    node_live: Path, server: ServerProcess, make_product: Any, db: asyncpg.Connection
) -> None:
    sku = await make_product(5)
    code, lines, err = await run(
        "node", str(node_live), "--url", server.url, "--sku", sku, "--timeout", "20"
    )
    assert code == 0, (lines, err)
    assert events(lines, "connected")
    (held,) = [line["reservation"] for line in events(lines, "reserved")]
    assert held["__typename"] == "Reservation" and held["status"] == "PENDING"
    # The hold it was told about is the one in the database, made with the page's key.
    found = await reservation(db, held["id"])
    assert (found["status"], found["lines"]) == ("PENDING", [f"{sku}:1"])
    assert found["key"].startswith("node-live-")
    seen = [line["availability"] for line in events(lines, "availability")]
    assert (seen[0]["sku"], seen[0]["available"], seen[0]["reserved"]) == (sku, 5, 0)
    now = await stock(db, sku)
    assert (now["reserved"], now["available"]) == (1, 4)
    # The last update it printed is the database's state after the reserve.
    assert seen[-1] == {"sku": sku, **now}
    assert events(lines, "fell") == [{"event": "fell", "from": 5, "to": 4}]


# The Python checkout.

CHECKOUT = (sys.executable, str(EXAMPLES / "checkout.py"))


async def test_the_checkout_reserves_confirms_and_prints_the_final_state(
    server: ServerProcess, make_product: Any, db: asyncpg.Connection
) -> None:
    sku = await make_product(5)
    code, lines, err = await run(*CHECKOUT, "--url", server.url, "--sku", sku, "--quantity", "2")
    assert code == 0, (lines, err)
    assert not events(lines, "reserve_failed")
    (reserved,) = events(lines, "reserved")
    (confirmed,) = events(lines, "confirmed")
    held = reserved["reservation"]
    assert held["__typename"] == "Reservation" and held["status"] == "PENDING"
    assert confirmed["reservation"]["id"] == held["id"]
    assert confirmed["reservation"]["status"] == "CONFIRMED"
    assert await reservation(db, held["id"]) == {
        "status": "CONFIRMED",
        "key": reserved["key"],
        "lines": [f"{sku}:2"],
    }
    now = await stock(db, sku)
    assert (now["quantity"], now["reserved"]) == (3, 0)
    (final,) = events(lines, "product")
    assert final["product"] == {"sku": sku, "quantity": 3, "reserved": 0, "available": 3}


@pytest.fixture
async def losing_proxy(server: ServerProcess) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A proxy in front of the server that forwards every request, but answers the first
    reserve with 503 after the server has made the hold: the answer lost on the way back,
    as a load balancer timing out would lose it. Yields its URL and the reserves it saw."""
    reserves: list[dict[str, Any]] = []

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with upstream.request(
            request.method, request.path_qs, data=body, headers=headers
        ) as answer:
            payload = await answer.read()
            status, content_type = answer.status, answer.headers.get("content-type")
        if b"mutation Reserve" in body:
            reserves.append(json.loads(body)["variables"])
            if len(reserves) == 1:
                return web.Response(status=503, text="upstream timed out")
        return web.Response(
            status=status, body=payload, headers={"content-type": content_type or "text/plain"}
        )

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession(server.url) as upstream:
        yield f"http://127.0.0.1:{port}", reserves
    await runner.cleanup()


async def test_a_lost_reserve_answer_is_retried_with_the_same_key_and_holds_once(
    losing_proxy: tuple[str, list[dict[str, Any]]], make_product: Any, db: asyncpg.Connection
) -> None:
    url, reserves = losing_proxy
    sku = await make_product(5)
    code, lines, err = await run(*CHECKOUT, "--url", url, "--sku", sku, "--quantity", "2")
    assert code == 0, (lines, err)
    (failed,) = events(lines, "reserve_failed")
    assert failed["attempt"] == 1 and "503" in failed["error"]
    (reserved,) = events(lines, "reserved")
    assert reserved["attempt"] == 2
    # Both attempts carried one key, and the second was answered the first one's hold.
    assert [r["key"] for r in reserves] == [reserved["key"]] * 2
    holds = await db.fetch(
        "SELECT r.id::text, r.status::text FROM reservation r "
        "JOIN reservation_line l ON l.reservation_id = r.id "
        "JOIN product p ON p.id = l.product_id WHERE p.sku = $1",
        sku,
    )
    assert [tuple(h) for h in holds] == [(reserved["reservation"]["id"], "CONFIRMED")]
    now = await stock(db, sku)
    assert (now["quantity"], now["reserved"]) == (3, 0)
    (final,) = events(lines, "product")
    assert final["product"] == {"sku": sku, "quantity": 3, "reserved": 0, "available": 3}


async def test_a_checkout_that_does_not_fit_holds_nothing_and_fails(
    server: ServerProcess, make_product: Any, db: asyncpg.Connection
) -> None:
    sku = await make_product(1)
    code, lines, _ = await run(*CHECKOUT, "--url", server.url, "--sku", sku, "--quantity", "2")
    assert code == 1
    (reserved,) = events(lines, "reserved")
    assert reserved["reservation"] == {
        "__typename": "InsufficientStock",
        "sku": sku,
        "requested": 2,
        "available": 1,
        "message": reserved["reservation"]["message"],
    }
    assert not events(lines, "confirmed")
    assert (await stock(db, sku))["reserved"] == 0

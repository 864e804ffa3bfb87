"""Per-client WebSocket limits through a real server: connections, subscriptions, churn.

Each test is a client of its own: the server trusts 127.0.0.1 as a proxy (uvicorn's
FORWARDED_ALLOW_IPS default), so an X-Forwarded-For address is the client it counts.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from inventory_graphql.testing.graphql_ws import AVAILABILITY, GraphQLWebSocket, Subscription
from inventory_graphql.testing.server import ServerProcess
from tests.support.graphql_http import SERVER_ENV

CONNECTIONS = 32  # the defaults: INVENTORY_MAX_WS_CONNECTIONS_PER_CLIENT
SUBSCRIPTIONS = 64  # INVENTORY_MAX_SUBSCRIPTIONS_PER_CLIENT
PER_CONNECTION = 16  # INVENTORY_MAX_SUBSCRIPTIONS_PER_CONNECTION
RATE, BURST = 20, 100  # room for the caps to be reached at once; churn still refused

_addresses = itertools.count(1)


@pytest.fixture(scope="module")
def limited(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with the default caps (the shared test server has none); the cost budget
    (tests/security/test_cost_budget.py) stays off, so every refusal here is these caps'."""
    env = {
        **SERVER_ENV,
        "DATABASE_URL": database_url,
        "INVENTORY_MAX_WS_CONNECTIONS_PER_CLIENT": "",  # empty: the default
        "INVENTORY_MAX_SUBSCRIPTIONS_PER_CLIENT": "",
        "INVENTORY_SUBSCRIBE_RATE_PER_CLIENT": str(RATE),
        "INVENTORY_SUBSCRIBE_BURST_PER_CLIENT": str(BURST),
    }
    log = tmp_path_factory.mktemp("limited") / "server.log"
    with ServerProcess(env, log=log) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), connector=aiohttp.TCPConnector(limit=0)
    ) as s:
        yield s


class Client:
    """One client address, opening sockets to the limited server."""

    def __init__(self, session: aiohttp.ClientSession, server: ServerProcess) -> None:
        self.address = f"10.13.{next(_addresses)}.1"
        self.session = session
        self.server = server
        self.sockets: list[GraphQLWebSocket] = []

    async def connect(self) -> GraphQLWebSocket:
        ws = await GraphQLWebSocket.connect(
            self.session, self.server.url, headers={"X-Forwarded-For": self.address}
        )
        self.sockets.append(ws)
        return ws

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()


@pytest.fixture
async def clients(session, limited) -> AsyncIterator[Any]:
    made: list[Client] = []

    def make() -> Client:
        made.append(Client(session, limited))
        return made[-1]

    yield make
    for client in made:
        await client.close()


async def answer(sub: Subscription) -> dict[str, Any]:
    """The first message for a subscription: a snapshot (`next`) or an `error`."""
    message = await sub.message()
    assert message["type"] in ("next", "error"), message
    return message


def code(message: dict[str, Any]) -> str:
    if message["type"] == "next" and not message["payload"].get("errors"):
        return "ok"
    errors = message["payload"] if message["type"] == "error" else message["payload"]["errors"]
    return str(errors[0].get("extensions", {}).get("code", errors[0]["message"]))


async def metric(session: aiohttp.ClientSession, server: ServerProcess, name: str) -> float:
    async with session.get(f"{server.url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise KeyError(name)


async def test_800_subscriptions_from_one_client_are_refused_past_the_caps(
    clients, session, limited, make_product
):
    sku = await make_product(5)
    attacker, shopper = clients(), clients()
    active = await metric(session, limited, "inventory_active_subscriptions")

    # The attack: 50 sockets asking for 16 subscriptions each.
    opened = await asyncio.gather(*(attacker.connect() for _ in range(50)), return_exceptions=True)
    sockets = [ws for ws in opened if isinstance(ws, GraphQLWebSocket)]
    refused = [e for e in opened if isinstance(e, aiohttp.WSServerHandshakeError)]
    assert len(sockets) == CONNECTIONS
    assert len(refused) == 50 - CONNECTIONS, opened
    assert {e.status for e in refused} == {429}
    assert all(e.headers and e.headers.get("Retry-After") for e in refused)

    subs = [await ws.subscribe(AVAILABILITY, skus=[sku]) for ws in sockets for _ in range(16)]
    answers = await asyncio.gather(*(answer(sub) for sub in subs))
    assert Counter(map(code, answers)) == {
        "ok": SUBSCRIPTIONS,
        "TOO_MANY_SUBSCRIPTIONS": CONNECTIONS * PER_CONNECTION - SUBSCRIPTIONS,
    }
    # A refusal is the protocol's `error` message for that operation, typed and clear.
    refusal = next(m for m in answers if m["type"] == "error")
    (error,) = refusal["payload"]
    assert error["extensions"]["code"] == "TOO_MANY_SUBSCRIPTIONS"
    assert error["extensions"]["limit"] == SUBSCRIPTIONS
    assert "at most 64" in error["message"]
    assert await metric(session, limited, "inventory_active_subscriptions") == active + 64

    # Another client is unaffected.
    mine = await (await shopper.connect()).subscribe(AVAILABILITY, skus=[sku])
    assert (await mine.next())["availability"]["available"] == 5

    # Refusals leave the attacker's connections up.
    assert not any(ws.ws.closed for ws in sockets)


async def test_refusals_read_nothing_from_the_database(clients, db, make_product):
    sku = await make_product(5)
    client = clients()
    sockets = [await client.connect() for _ in range(SUBSCRIPTIONS // PER_CONNECTION)]
    subs = [await ws.subscribe(AVAILABILITY, skus=[sku]) for ws in sockets for _ in range(16)]
    assert {code(await answer(sub)) for sub in subs} == {"ok"}
    extra = await client.connect()

    # With the product table locked, any read of it would wait and end BUSY (lock_timeout).
    async with db.transaction():
        await db.execute("LOCK TABLE product IN ACCESS EXCLUSIVE MODE")
        over = await extra.subscribe(AVAILABILITY, skus=[sku])
        assert code(await answer(over)) == "TOO_MANY_SUBSCRIPTIONS"


async def test_the_connection_cap_counts_each_client_and_gives_slots_back(
    clients, session, limited
):
    client = clients()
    sockets = [await client.connect() for _ in range(CONNECTIONS)]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.connect()
    assert refused.value.status == 429
    await clients().connect()  # another client still connects

    # A clean close and an abrupt one (no close frame) both give the slot back.
    await sockets[0].close()
    sockets[1].abort()
    deadline = time.monotonic() + 10
    back: list[GraphQLWebSocket] = []
    while len(back) < 2:
        try:
            back.append(await client.connect())
        except aiohttp.WSServerHandshakeError as error:
            assert error.status == 429
            assert time.monotonic() < deadline, "slots not given back within 10 s"
            await asyncio.sleep(0.05)
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.connect()
    # Refusals are counted, not logged one by one (uvicorn would log each as an error).
    assert limited.log is not None
    assert "handshake" not in limited.log.read_text()


async def test_subscribe_churn_is_rate_limited_and_recovers(clients, make_product):
    sku = await make_product(5)
    ws = await clients().connect()
    started = time.monotonic()
    accepted = 0
    while True:
        sub = await ws.subscribe(AVAILABILITY, skus=[sku])
        message = await answer(sub)
        if code(message) != "ok":
            break
        accepted += 1
        await sub.complete()
    elapsed = time.monotonic() - started
    assert BURST <= accepted <= BURST + RATE * elapsed + 1
    assert message["type"] == "error"
    (error,) = message["payload"]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert error["extensions"]["retriable"] is True
    wait = error["extensions"]["retryAfterSeconds"]
    assert 0 < wait <= 1 / RATE + 0.001
    assert f"retry in {wait:g} s" in error["message"]

    # The connection stays up, and after the wait a subscription starts again.
    await asyncio.sleep(wait)
    again = await ws.subscribe(AVAILABILITY, skus=[sku])
    assert (await again.next())["availability"]["sku"] == sku


async def test_quota_comes_back_after_complete_and_after_disconnect(clients, make_product):
    sku = await make_product(5)
    client = clients()
    sockets = [await client.connect() for _ in range(SUBSCRIPTIONS // PER_CONNECTION + 1)]
    held = [
        await ws.subscribe(AVAILABILITY, skus=[sku])
        for ws in sockets[:-1]
        for _ in range(PER_CONNECTION)
    ]
    assert {code(await answer(sub)) for sub in held} == {"ok"}
    spare = sockets[-1]
    assert code(await answer(await spare.subscribe(AVAILABILITY, skus=[sku]))) != "ok"

    # complete: the next subscribe, right after it, is accepted.
    await held[0].complete()
    assert code(await answer(await spare.subscribe(AVAILABILITY, skus=[sku]))) == "ok"
    assert code(await answer(await spare.subscribe(AVAILABILITY, skus=[sku]))) != "ok"

    # A client that disconnects (abruptly, 16 subscriptions open) gets all 16 back.
    sockets[1].abort()
    fresh = await client.connect()
    deadline = time.monotonic() + 10
    accepted = 0
    while accepted < PER_CONNECTION:
        if code(await answer(await fresh.subscribe(AVAILABILITY, skus=[sku]))) == "ok":
            accepted += 1
        else:
            assert time.monotonic() < deadline, "quota not given back within 10 s"
            await asyncio.sleep(0.05)
    assert code(await answer(await spare.subscribe(AVAILABILITY, skus=[sku]))) != "ok"

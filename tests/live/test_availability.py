"""Live availability through a real server, a real WebSocket and real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import psutil
import pytest

from inventory_graphql.inventory.catalog import ADJUST
from inventory_graphql.live.channel import CHANNEL
from inventory_graphql.testing.graphql_ws import AVAILABILITY, GraphQLWebSocket, SubscriptionError
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import ADJUST_STOCK, CONFIRM, RELEASE, RESERVE
from tests.support.database import check, new_sku
from tests.support.graphql_http import SERVER_ENV


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), connector=aiohttp.TCPConnector(limit=0)
    ) as s:
        yield s


@pytest.fixture
async def socket(session, server):
    ws = await GraphQLWebSocket.connect(session, server.url)
    yield ws
    await ws.close()


async def metric(session, server, name: str) -> float:
    async with session.get(f"{server.url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise KeyError(name)


async def eventually(probe, expected, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while (value := await probe()) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return value


def numbers(update: dict) -> tuple[int, int, int]:
    return update["quantity"], update["reserved"], update["available"]


async def test_snapshot_then_every_lifecycle_change(socket, gql, make_product):
    sku = await make_product(10)
    sub = await socket.subscribe(AVAILABILITY, skus=[sku])
    updates = sub.updates()
    snapshot = await anext(updates)
    assert snapshot["sku"] == sku and numbers(snapshot) == (10, 0, 10)
    versions = [snapshot["version"]]

    async def expect(quantity: int, reserved: int) -> None:
        update = await anext(updates)
        assert numbers(update) == (quantity, reserved, quantity - reserved)
        assert update["version"] > versions[-1]
        versions.append(update["version"])

    first = (await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 3}]))["reserve"]
    await expect(10, 3)
    await gql.execute(CONFIRM, id=first["id"])
    await expect(7, 0)
    second = (await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 2}]))["reserve"]
    await expect(7, 2)
    await gql.execute(RELEASE, id=second["id"])
    await expect(7, 0)
    await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 4}], ttl=1)
    await expect(7, 4)
    await expect(7, 0)  # expired by the server's sweeper
    await gql.execute(ADJUST_STOCK, sku=sku, delta=5, reason="restock")
    await expect(12, 0)


SHAPED = """
subscription Shaped($skus: [String!]!, $withTime: Boolean!) {
  stock: availability(skus: $skus) {
    __typename
    id: sku
    left: available
    ...Numbers
    ... on AvailabilityUpdate { version }
    updatedAt @include(if: $withTime)
  }
}
fragment Numbers on AvailabilityUpdate { quantity reserved }
"""


async def test_updates_have_exactly_the_shape_each_subscriber_asked_for(socket, gql, make_product):
    # Updates after the snapshot are rendered once per selection and shared: subscribers
    # with one document but different variables must still get their own shape.
    sku = await make_product(10)
    timed = await socket.subscribe(SHAPED, skus=[sku], withTime=True)
    untimed = await socket.subscribe(SHAPED, skus=[sku], withTime=False)
    plain = await socket.subscribe(AVAILABILITY, skus=[sku])
    subs = (timed, untimed, plain)
    snapshots = [await sub.message() for sub in subs]
    await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 3}])
    updates = [await sub.message() for sub in subs]

    for sub, snapshot, update in zip(subs, snapshots, updates, strict=True):
        assert update["id"] == sub.id and update["type"] == "next"
        assert list(update) == list(snapshot) and list(update["payload"]) == ["data"]
        (field,) = update["payload"]["data"]
        assert list(update["payload"]["data"][field]) == list(snapshot["payload"]["data"][field])
    version = snapshots[0]["payload"]["data"]["stock"]["version"] + 1
    timed_update = updates[0]["payload"]["data"]["stock"]
    assert timed_update.pop("updatedAt") >= snapshots[0]["payload"]["data"]["stock"]["updatedAt"]
    expected = {
        "__typename": "AvailabilityUpdate",
        "id": sku,
        "left": 7,
        "quantity": 10,
        "reserved": 3,
        "version": version,
    }
    assert timed_update == expected
    assert updates[1]["payload"]["data"]["stock"] == expected
    assert numbers(updates[2]["payload"]["data"]["availability"]) == (10, 3, 7)


async def test_a_completed_subscription_gets_nothing_more(socket, gql, make_product):
    sku = await make_product(10)
    stays, leaves = [await socket.subscribe(AVAILABILITY, skus=[sku]) for _ in range(2)]
    for sub in (stays, leaves):
        await sub.next()  # snapshot
    await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 1}])
    for sub in (stays, leaves):
        assert numbers((await sub.next())["availability"]) == (10, 1, 9)
    await leaves.complete()
    await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 1}])
    assert numbers((await stays.next())["availability"]) == (10, 2, 8)
    await asyncio.sleep(0.3)
    assert leaves.waiting == 0


async def test_a_plain_sql_update_reaches_subscribers(socket, db, make_product):
    sku = await make_product(5)
    sub = await socket.subscribe(AVAILABILITY, skus=[sku])
    assert (await sub.next())["availability"]["available"] == 5

    await db.execute("UPDATE product SET name = 'typed into psql' WHERE sku = $1", sku)
    assert (await sub.next())["availability"]["version"] == 2
    await db.execute(ADJUST, sku, 2, "typed into psql")
    assert numbers((await sub.next())["availability"]) == (7, 0, 7)


async def test_a_forged_notification_neither_reaches_nor_silences_subscribers(
    socket, gql, db, make_product
):
    # Any database role may NOTIFY the channel; a huge version once made every subscriber
    # ignore the real updates that followed, until it reconnected.
    sku = await make_product(5)
    sub = await socket.subscribe(AVAILABILITY, skus=[sku])
    assert numbers((await sub.next())["availability"]) == (5, 0, 5)
    forged = json.dumps([[sku, 999, 0, 2**40, "2026-12-01T00:00:00+00:00"]])
    await db.execute("SELECT pg_notify($1, $2)", CHANNEL, forged)

    await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 2}])

    update = (await sub.next())["availability"]
    while numbers(update) == (5, 0, 5):  # the row as it was, if the check read it first
        update = (await sub.next())["availability"]
    assert numbers(update) == (5, 2, 3) and update["version"] < 2**40


async def test_one_statement_changing_many_products_is_split_under_8000_bytes(socket, db):
    from inventory_graphql.inventory.catalog import CREATE

    # Longest skus allowed: 100 of them in one payload would pass 8000 bytes.
    skus = [new_sku().ljust(64, "x") for _ in range(100)]
    for sku in skus:
        await db.fetchrow(CREATE, sku, "long sku", 1)
    sub = await socket.subscribe(AVAILABILITY, skus=skus)
    for _ in skus:
        await sub.next()  # snapshots
    payloads: list[str] = []
    await db.add_listener("inventory_availability", lambda *args: payloads.append(args[3]))

    await db.execute("UPDATE product SET name = name || '!' WHERE sku = any($1::text[])", skus)

    seen = {(await sub.next())["availability"]["sku"] for _ in skus}
    assert seen == set(skus)
    ours = [p for p in payloads if any(sku in p for sku in skus)]
    assert len(ours) >= 2, "one statement, several notifications"
    assert all(len(p.encode()) < 8000 for p in ours)
    assert sorted(row[0] for p in ours for row in json.loads(p)) == sorted(skus)


async def test_unknown_skus_fail_the_subscription_naming_them(socket, make_product):
    sku = await make_product(1)
    sub = await socket.subscribe(AVAILABILITY, skus=[sku, "NOPE-a", "NOPE-b"])
    with pytest.raises(SubscriptionError, match="unknown skus: NOPE-a, NOPE-b"):
        await sub.next()
    for skus, message in (([], "give 1 to 100"), ([f"S-{i}" for i in range(101)], "1 to 100")):
        bad = await socket.subscribe(AVAILABILITY, skus=skus)
        with pytest.raises(SubscriptionError, match=message):
            await bad.next()


async def test_subscriptions_per_connection_are_capped(socket, make_product):
    sku = await make_product(1)
    subs = [await socket.subscribe(AVAILABILITY, skus=[sku]) for _ in range(16)]
    for sub in subs:
        await sub.next()
    extra = await socket.subscribe(AVAILABILITY, skus=[sku])
    with pytest.raises(SubscriptionError, match="Subscription limit reached"):
        await extra.next()


async def test_listener_connection_killed_subscribers_resync(
    socket, session, server, db, gql, make_product
):
    sku = await make_product(10)
    sub = await socket.subscribe(AVAILABILITY, skus=[sku])
    assert (await sub.next())["availability"]["available"] == 10
    reconnects = await metric(session, server, "inventory_listener_reconnects_total")

    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'inventory-graphql-listener' AND datname = current_database()"
    )
    assert killed >= 1
    # Changed right away: the notification may well be lost while the listener is away.
    await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 4}])
    await gql.execute(ADJUST_STOCK, sku=sku, delta=1, reason="restock")

    deadline = time.monotonic() + 10
    latest = None
    while latest is None or numbers(latest) != (11, 4, 7):
        latest = (await sub.next(timeout=deadline - time.monotonic()))["availability"]
    assert await metric(session, server, "inventory_listener_reconnects_total") > reconnects
    assert await metric(session, server, "inventory_listener_connected") == 1


async def test_two_processes_see_each_others_changes(session, database_url, make_product, tmp_path):
    sku = await make_product(10)
    other = ServerProcess({"DATABASE_URL": database_url, **SERVER_ENV}, log=tmp_path / "log")
    try:
        await asyncio.to_thread(other.wait_ready)
        first = await GraphQLWebSocket.connect(session, other.url)
        sub = await first.subscribe(AVAILABILITY, skus=[sku])
        assert (await sub.next())["availability"]["available"] == 10
        body = {"query": RESERVE, "variables": {"lines": [{"sku": sku, "quantity": 2}]}}
        async with session.post(f"{other.url}/graphql", json=body) as response:
            assert (await response.json())["data"]["reserve"]["__typename"] == "Reservation"
        assert (await sub.next())["availability"]["available"] == 8
        await first.close()
    finally:
        assert other.stop() == 0


async def test_session_server_sees_changes_made_through_another_process(
    socket, database_url, make_product, tmp_path, session
):
    sku = await make_product(10)
    sub = await socket.subscribe(AVAILABILITY, skus=[sku])
    assert (await sub.next())["availability"]["available"] == 10
    other = ServerProcess({"DATABASE_URL": database_url, **SERVER_ENV}, log=tmp_path / "log")
    try:
        await asyncio.to_thread(other.wait_ready)
        body = {"query": RESERVE, "variables": {"lines": [{"sku": sku, "quantity": 3}]}}
        async with session.post(f"{other.url}/graphql", json=body) as response:
            assert (await response.json())["data"]["reserve"]["__typename"] == "Reservation"
        assert (await sub.next())["availability"]["available"] == 7
    finally:
        assert other.stop() == 0


async def test_a_subscriber_that_does_not_read_costs_bounded_memory(
    session, server, db, make_product
):
    sku = await make_product(0)
    ws = await session.ws_connect(
        f"{server.url.replace('http', 'ws')}/graphql", protocols=["graphql-transport-ws"]
    )
    await ws.send_json({"type": "connection_init", "payload": {}})
    assert (await ws.receive_json())["type"] == "connection_ack"
    await ws.send_json(
        {
            "id": "slow",
            "type": "subscribe",
            "payload": {"query": AVAILABILITY, "variables": {"skus": [sku]}},
        }
    )
    assert (await ws.receive_json())["payload"]["data"]["availability"]["version"] == 1
    process = psutil.Process(server.process.pid)
    rss_before = process.memory_info().rss

    # 10,000 changes while this client reads nothing.
    await db.execute("SET synchronous_commit = off")
    for _ in range(10):
        await db.executemany(ADJUST, [(sku, 1, "slow reader test")] * 1000)
    final_version = await db.fetchval("SELECT version FROM product WHERE sku = $1", sku)
    assert final_version == 10_001
    await asyncio.sleep(1)
    pending = await metric(session, server, "inventory_pending_updates")
    rss_growth = process.memory_info().rss - rss_before

    assert pending <= 1, "the server queues at most the latest state per sku"
    assert rss_growth < 20 * 2**20, f"server grew by {rss_growth / 2**20:.1f} MiB"

    # When it reads at last: versions only go up, and it ends on the latest state.
    last_version = 1
    received = 0
    while last_version < final_version:
        update = (await ws.receive_json(timeout=10))["payload"]["data"]["availability"]
        assert update["version"] > last_version
        last_version = update["version"]
        received += 1
    assert update["quantity"] == 10_000 and update["available"] == 10_000
    await ws.close()


async def test_100_abrupt_disconnects_release_everything(session, server, make_product):
    sku = await make_product(1)
    baseline = await metric(session, server, "inventory_active_subscriptions")
    sockets = [await GraphQLWebSocket.connect(session, server.url) for _ in range(100)]
    subs = [await ws.subscribe(AVAILABILITY, skus=[sku]) for ws in sockets]
    for sub in subs:
        await sub.next()
    assert await metric(session, server, "inventory_active_subscriptions") == baseline + 100

    for ws in sockets:
        ws.abort()

    async def active() -> float:
        return await metric(session, server, "inventory_active_subscriptions")

    assert await eventually(active, baseline) == baseline
    assert await metric(session, server, "inventory_watched_skus") <= baseline
    assert await metric(session, server, "inventory_pending_updates") == 0


async def test_stock_still_reconciles(db):
    assert (await check(db)).ok

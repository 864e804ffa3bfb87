"""The `reservation(id)` subscription: a checkout page's live hold status, through a real
server, a real WebSocket and real PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from datetime import datetime

import aiohttp
import asyncpg
import pytest

from inventory_graphql.database import DROP_DATABASE, create_migrated_database, migrations
from inventory_graphql.inventory.catalog import CREATE
from inventory_graphql.live import reservation_watch
from inventory_graphql.testing.graphql_ws import GraphQLWebSocket, Subscription, SubscriptionError
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import CONFIRM, RELEASE, RESERVE
from tests.support.database import check, new_sku
from tests.support.graphql_http import SERVER_ENV

HOLD = """
subscription Hold($id: ID!) {
  reservation(id: $id) { id status expiresAt resolvedAt lines { sku quantity } }
}
"""

HOLD_PARTS = """
subscription Hold($id: ID!) {
  reservation(id: $id) {
    status expiresAt lines { sku quantity confirmedQuantity releasedQuantity }
  }
}
"""
PART = """
mutation Part($id: ID!, $lines: [ReserveLineInput!]) {
  release(id: $id, lines: $lines) { __typename ... on Reservation { status } }
}
"""
BUY = """
mutation Buy($id: ID!, $lines: [ReserveLineInput!]) {
  confirm(id: $id, lines: $lines) { __typename ... on Reservation { status } }
}
"""
EXTEND = """
mutation Extend($id: ID!, $ttl: Int!) {
  extendReservation(id: $id, ttlSeconds: $ttl) {
    __typename ... on Reservation { expiresAt }
  }
}
"""


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.fixture
async def socket(session, server):
    ws = await GraphQLWebSocket.connect(session, server.url)
    yield ws
    await ws.close()


async def hold(gql, sku: str, quantity: int = 1, ttl: int | None = None) -> dict:
    answer = (await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": quantity}], ttl=ttl))[
        "reserve"
    ]
    assert answer["__typename"] == "Reservation", answer
    return answer


async def state(sub: Subscription) -> dict:
    return (await sub.next())["reservation"]


async def completes(sub: Subscription) -> None:
    assert (await sub.message())["type"] == "complete"


async def test_current_state_first_then_confirm_then_complete(socket, gql, make_product):
    sku = await make_product(5)
    held = await hold(gql, sku, 2)
    sub = await socket.subscribe(HOLD, id=held["id"])
    first = await state(sub)
    assert first == {
        "id": held["id"],
        "status": "PENDING",
        "expiresAt": held["expiresAt"],
        "resolvedAt": None,
        "lines": [{"sku": sku, "quantity": 2}],
    }

    confirmed = (await gql.execute(CONFIRM, id=held["id"]))["confirm"]
    final = await state(sub)
    assert final["status"] == "CONFIRMED"
    assert final["resolvedAt"] == confirmed["resolvedAt"]
    await completes(sub)


async def test_release_is_final(socket, gql, make_product):
    sku = await make_product(5)
    held = await hold(gql, sku)
    sub = await socket.subscribe(HOLD, id=held["id"])
    assert (await state(sub))["status"] == "PENDING"
    await gql.execute(RELEASE, id=held["id"])
    assert (await state(sub))["status"] == "RELEASED"
    await completes(sub)


async def test_an_ended_hold_answers_its_final_state_and_completes(socket, gql, make_product):
    sku = await make_product(5)
    held = await hold(gql, sku)
    await gql.execute(RELEASE, id=held["id"])
    sub = await socket.subscribe(HOLD, id=held["id"])
    assert (await state(sub))["status"] == "RELEASED"
    await completes(sub)


async def test_a_change_written_in_sql_reaches_the_subscriber(socket, db, gql, make_product):
    # Whatever writes the hold (here a person in psql extending it), the subscriber sees
    # what the database then holds.
    sku = await make_product(5)
    held = await hold(gql, sku)
    sub = await socket.subscribe(HOLD, id=held["id"])
    assert (await state(sub))["expiresAt"] == held["expiresAt"]
    later = await db.fetchval(
        "UPDATE reservation SET expires_at = expires_at + interval '10 minutes' "
        "WHERE id = $1 RETURNING expires_at",
        uuid.UUID(held["id"]),
    )
    assert datetime.fromisoformat((await state(sub))["expiresAt"]) == later
    await gql.execute(RELEASE, id=held["id"])
    assert (await state(sub))["status"] == "RELEASED"
    await completes(sub)


async def test_forged_or_malformed_notifications_change_nothing(socket, db, gql, make_product):
    sku = await make_product(5)
    held = await hold(gql, sku)
    sub = await socket.subscribe(HOLD, id=held["id"])
    assert (await state(sub))["status"] == "PENDING"
    channel = reservation_watch.CHANNEL
    await db.execute("SELECT pg_notify($1, $2)", channel, "not json")
    await db.execute("SELECT pg_notify($1, $2)", channel, f'["{held["id"]}"]')
    # A notification makes the hub re-read; the hold has not changed, so nothing is sent.
    with pytest.raises(TimeoutError):
        await sub.message(timeout=0.5)
    await gql.execute(CONFIRM, id=held["id"])
    assert (await state(sub))["status"] == "CONFIRMED"


async def test_unknown_or_malformed_id_fails_naming_it(socket):
    unknown = str(uuid.uuid4())
    with pytest.raises(SubscriptionError, match=f"unknown reservation: {unknown}"):
        await (await socket.subscribe(HOLD, id=unknown)).next()
    with pytest.raises(SubscriptionError, match="malformed reservation id not-a-hold"):
        await (await socket.subscribe(HOLD, id="not-a-hold")).next()


async def test_after_the_listener_reconnects_watched_holds_are_read_again(
    socket, db, gql, make_product
):
    sku = await make_product(5)
    held = await hold(gql, sku)
    sub = await socket.subscribe(HOLD, id=held["id"])
    assert (await state(sub))["status"] == "PENDING"
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'inventory-graphql-listener' AND datname = current_database()"
    )
    assert killed >= 1
    # Released right away: the notification may well be lost while the listener is away.
    await gql.execute(RELEASE, id=held["id"])
    assert (await state(sub))["status"] == "RELEASED"
    await completes(sub)


async def test_a_hundred_watched_holds_expiring_together_each_reach_their_page_in_time(
    session, server, gql, make_product
):
    sku = await make_product(100)
    holds = await asyncio.gather(*(hold(gql, sku, ttl=2) for _ in range(100)))
    sockets = [await GraphQLWebSocket.connect(session, server.url) for _ in range(7)]
    try:
        subs = [await sockets[i % 7].subscribe(HOLD, id=h["id"]) for i, h in enumerate(holds)]
        for sub in subs:
            assert (await state(sub))["status"] == "PENDING"

        async def lateness(held: dict, sub: Subscription) -> float:
            final = await state(sub)
            arrived = time.time()
            assert final["status"] == "EXPIRED"
            return arrived - datetime.fromisoformat(held["expiresAt"]).timestamp()

        late = await asyncio.gather(*(lateness(h, s) for h, s in zip(holds, subs, strict=True)))
        assert max(late) < 1.0, sorted(late)[-5:]
    finally:
        for ws in sockets:
            await ws.close()


def test_the_migration_spells_the_channel_and_triggers_as_the_hub_does():
    sql = next(m.sql for m in migrations() if m.name == "reservation_notify")
    assert re.findall(r"pg_notify\('([a-z_]+)'", sql) == [reservation_watch.CHANNEL]
    for trigger in reservation_watch.TRIGGERS:
        assert re.search(rf"CREATE TRIGGER {trigger}\b", sql)


PER_CLIENT = 8


@pytest.fixture(scope="module")
def own_database(postgres_url):
    """A database of this module's own: no other process sweeps it."""
    name = f"inventory_hold_{uuid.uuid4().hex[:8]}"
    url = asyncio.run(create_migrated_database(postgres_url, name))
    yield url

    async def drop() -> None:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(await conn.fetchval(DROP_DATABASE, name))
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(scope="module")
def two_servers(own_database, tmp_path_factory):
    """Two processes on one database, sweeping at the default interval (0.5 s), each
    letting a client hold `PER_CLIENT` subscriptions."""
    env = {k: v for k, v in SERVER_ENV.items() if k != "INVENTORY_SWEEP_INTERVAL_SECONDS"}
    env["INVENTORY_MAX_SUBSCRIPTIONS_PER_CLIENT"] = str(PER_CLIENT)
    logs = tmp_path_factory.mktemp("hold-servers")
    servers = [
        ServerProcess({"DATABASE_URL": own_database, **env}, log=logs / f"log{i}") for i in range(2)
    ]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        assert [server.stop() for server in servers] == [0, 0]


async def post(session, server, query: str, **variables) -> dict:
    body = {"query": query, "variables": variables}
    async with session.post(f"{server.url}/graphql", json=body) as response:
        answer = await response.json()
    assert "errors" not in answer, answer
    return answer["data"]


async def metric(session, server, name: str) -> float:
    async with session.get(f"{server.url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise KeyError(name)


async def product(database_url: str, quantity: int) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        sku = new_sku()
        assert await conn.fetchrow(CREATE, sku, "Test product", quantity)
        return sku
    finally:
        await conn.close()


async def test_a_change_through_one_process_reaches_a_subscriber_on_the_other(
    two_servers, own_database, session
):
    one, other = two_servers
    sku = await product(own_database, 5)
    held = (await post(session, one, RESERVE, lines=[{"sku": sku, "quantity": 1}]))["reserve"]
    ws = await GraphQLWebSocket.connect(session, other.url)
    try:
        sub = await ws.subscribe(HOLD, id=held["id"])
        assert (await state(sub))["status"] == "PENDING"
        await post(session, one, CONFIRM, id=held["id"])
        assert (await state(sub))["status"] == "CONFIRMED"
        await completes(sub)
    finally:
        await ws.close()


async def test_expiry_reaches_subscribers_within_a_second_of_expires_at(
    two_servers, own_database, session
):
    sku = await product(own_database, 10)
    servers = two_servers
    sockets = [await GraphQLWebSocket.connect(session, s.url) for s in servers]
    try:
        holds, subs = [], []
        for i in range(6):  # ttl 1 s and 2 s, watched on both processes
            server = servers[i % 2]
            variables = {"lines": [{"sku": sku, "quantity": 1}], "ttl": 1 + i % 2}
            held = (await post(session, server, RESERVE, **variables))["reserve"]
            holds.append(held)
            subs.append(await sockets[(i // 2) % 2].subscribe(HOLD, id=held["id"]))
        for sub in subs:
            assert (await state(sub))["status"] == "PENDING"

        async def lateness(held: dict, sub: Subscription) -> float:
            final = await state(sub)
            arrived = time.time()
            assert final["status"] == "EXPIRED"
            await completes(sub)
            return arrived - datetime.fromisoformat(held["expiresAt"]).timestamp()

        late = await asyncio.gather(*(lateness(h, s) for h, s in zip(holds, subs, strict=True)))
        assert max(late) < 1.0, late
    finally:
        for ws in sockets:
            await ws.close()


async def test_hold_subscriptions_count_against_the_client_and_give_back_when_they_end(
    two_servers, own_database, session
):
    server = two_servers[0]
    sku = await product(own_database, PER_CLIENT + 1)
    ids = []
    for _ in range(PER_CLIENT + 1):
        held = await post(session, server, RESERVE, lines=[{"sku": sku, "quantity": 1}])
        ids.append(held["reserve"]["id"])
    ws = await GraphQLWebSocket.connect(session, server.url)
    try:
        subs = [await ws.subscribe(HOLD, id=i) for i in ids[:PER_CLIENT]]
        for sub in subs:
            assert (await state(sub))["status"] == "PENDING"
        refused = await ws.subscribe(HOLD, id=ids[-1])
        with pytest.raises(SubscriptionError) as error:
            await refused.next()
        assert error.value.errors[0]["extensions"]["code"] == "TOO_MANY_SUBSCRIPTIONS"

        # A hold that ends completes its subscription, and the client may watch another.
        await post(session, server, RELEASE, id=ids[0])
        assert (await state(subs[0]))["status"] == "RELEASED"
        await completes(subs[0])
        again = await ws.subscribe(HOLD, id=ids[-1])
        assert (await state(again))["status"] == "PENDING"
        assert await metric(session, server, "inventory_hold_subscriptions") == PER_CLIENT
        assert await metric(session, server, "inventory_watched_holds") == PER_CLIENT
    finally:
        await ws.close()
    # Operators see the subscriptions go when their pages do.
    for _ in range(100):
        if await metric(session, server, "inventory_hold_subscriptions") == 0:
            break
        await asyncio.sleep(0.05)
    assert await metric(session, server, "inventory_watched_holds") == 0


async def test_an_extended_hold_expires_at_its_new_time_and_the_page_hears_it(
    two_servers, own_database, session
):
    one, other = two_servers
    sku = await product(own_database, 1)
    lines = [{"sku": sku, "quantity": 1}]
    held = (await post(session, one, RESERVE, lines=lines, ttl=2))["reserve"]
    ws = await GraphQLWebSocket.connect(session, other.url)
    try:
        sub = await ws.subscribe(HOLD, id=held["id"])
        assert (await state(sub))["expiresAt"] == held["expiresAt"]
        extended = (await post(session, one, EXTEND, id=held["id"], ttl=3))["extendReservation"]
        new_expiry = datetime.fromisoformat(extended["expiresAt"]).timestamp()
        assert new_expiry > datetime.fromisoformat(held["expiresAt"]).timestamp()
        assert (await state(sub))["expiresAt"] == extended["expiresAt"]
        final = await state(sub)
        arrived = time.time()
        assert final["status"] == "EXPIRED"
        assert 0 <= arrived - new_expiry < 1.0
        await completes(sub)
    finally:
        await ws.close()


async def test_the_hold_database_still_reconciles(own_database, two_servers):
    conn = await asyncpg.connect(own_database)
    try:
        assert (await check(conn)).ok
    finally:
        await conn.close()


async def test_each_step_of_a_three_line_checkout_reaches_the_subscriber_in_order(
    socket, gql, make_product
):
    a, b, c = [await make_product(10) for _ in range(3)]
    lines = [{"sku": a, "quantity": 3}, {"sku": b, "quantity": 2}, {"sku": c, "quantity": 1}]
    held = (await gql.execute(RESERVE, lines=lines, ttl=60))["reserve"]
    sub = await socket.subscribe(HOLD_PARTS, id=held["id"])

    def parts(update: dict) -> list[tuple[int, int, int]]:
        """(reserved, bought, given back) of lines a, b and c."""
        found = {
            line["sku"]: (line["quantity"], line["confirmedQuantity"], line["releasedQuantity"])
            for line in update["lines"]
        }
        return [found[a], found[b], found[c]]

    first = await state(sub)
    assert (first["status"], parts(first)) == ("PENDING", [(3, 0, 0), (2, 0, 0), (1, 0, 0)])

    await gql.execute(PART, id=held["id"], lines=[{"sku": a, "quantity": 1}])
    released = await state(sub)
    assert (released["status"], parts(released)) == ("PENDING", [(3, 0, 1), (2, 0, 0), (1, 0, 0)])

    extended = (await gql.execute(EXTEND, id=held["id"], ttl=600))["extendReservation"]
    seen = await state(sub)
    assert seen["expiresAt"] == extended["expiresAt"] != first["expiresAt"]
    assert parts(seen) == parts(released)

    await gql.execute(
        BUY, id=held["id"], lines=[{"sku": a, "quantity": 2}, {"sku": b, "quantity": 1}]
    )
    final = await state(sub)
    # What was not bought went back in the same step.
    assert (final["status"], parts(final)) == ("CONFIRMED", [(3, 2, 1), (2, 1, 1), (1, 0, 1)])
    await completes(sub)

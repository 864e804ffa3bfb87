"""The stock event feed's acceptance: a consumer paging through `stockEvents` and another
subscribed over WebSocket (the admin token in connection_init), both resuming from their
last cursor after any disconnect, while 3 server processes sharing one PostgreSQL run
reserves (coalesced singles and carts), confirms, releases, expiries (short holds, every
server sweeping) and adjustments, beside transactions that write ledger rows and roll
back; one server is killed with SIGKILL and restarted, and PostgreSQL is restarted, in
the middle.

At the end, compared row by row: the paged events == the subscribed events == the
stock_event table in feed order; every ledger row since the feed's origin is one of those
events (same id, kind, deltas, hold) and every other event is a threshold crossing; no
gap, no duplicate, no rolled-back event; per product the numbers chain and versions never
go down (`check`); and every answer a client was told matches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from inventory_graphql.inventory.catalog import ADJUST
from inventory_graphql.testing.graphql_ws import GraphQLWebSocket, SubscriptionError
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import CONFIRM, RELEASE, RESERVE
from tests.api.test_stock_events import FEED, PAGE
from tests.faults.test_faults import own_postgres  # noqa: F401 (a fixture)
from tests.support.database import check, create_database
from tests.support.graphql_http import ADMIN, ADMIN_TOKEN, SERVER_ENV

LOAD_SECONDS = 8.0
SKUS = [f"FEED-{i}" for i in range(4)]
ROLLED_BACK = "rolled back"  # the reason of every ledger row written and rolled back
CROSSINGS = ("LOW_STOCK", "OUT_OF_STOCK", "BACK_IN_STOCK")
CREATE = """
mutation Create($sku: String!) {
  createProduct(sku: $sku, name: "feed", quantity: 40) { __typename }
}
"""
THRESHOLD = """
mutation T($sku: String!) { setLowStockThreshold(sku: $sku, threshold: 10) { __typename } }
"""
ADJUST_STOCK = """
mutation A($sku: String!, $delta: Int!) {
  adjustStock(sku: $sku, delta: $delta, reason: "count") { __typename }
}
"""
EVENT_ROWS = """
SELECT e.feed_key::text || '.' || e.id AS cursor, e.id, e.kind::text AS kind, p.sku,
       e.quantity_delta, e.reserved_delta, e.quantity, e.reserved, e.version,
       e.reservation_id::text AS reservation_id, e.reason
FROM stock_event e JOIN product p ON p.id = e.product_id
ORDER BY e.feed_key, e.id
"""
LEDGER_ROWS = """
SELECT m.id, m.kind::text AS kind, m.quantity_delta, m.reserved_delta,
       m.reservation_id::text AS reservation_id, m.reason
FROM stock_movement m, stock_event_origin o WHERE m.id > o.movement_id ORDER BY m.id
"""
KIND = {
    "CREATE": "CREATED",
    "ADJUST": "ADJUSTED",
    "SET": "SET",
    "RESERVE": "RESERVED",
    "CONFIRM": "CONFIRMED",
    "RELEASE": "RELEASED",
    "EXPIRE": "EXPIRED",
}


@dataclass
class Cluster:
    env: dict[str, str]
    servers: list[ServerProcess]
    log_dir: Any

    def url(self, rng: random.Random) -> str:
        return rng.choice(self.servers).url


@dataclass
class Told:
    """What clients were told: holds by id with their lines, final answers, and how many
    reserves got no answer (their outcome unknown to the client)."""

    holds: dict[str, list[str]] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)  # id -> CONFIRMED/RELEASED/EXPIRED
    unanswered_reserves: int = 0


async def post(
    session: aiohttp.ClientSession, url: str, query: str, **variables: Any
) -> dict[str, Any] | None:
    """The answer's data, or None when there was none (a dead server, 503, a timeout)."""
    try:
        async with session.post(
            f"{url}/graphql", json={"query": query, "variables": variables}, headers=ADMIN
        ) as response:
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("errors") or not body.get("data"):
        return None
    return dict(body["data"])


async def shopper(
    cluster: Cluster, told: Told, seed: int, until: float, session: aiohttp.ClientSession
) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    while time.monotonic() < until:
        roll = rng.random()
        url = cluster.url(rng)
        if roll < 0.5 or not mine:
            lines = [{"sku": sku, "quantity": rng.randint(1, 2)} for sku in rng.sample(SKUS, 2)]
            lines = lines[: 1 if rng.random() < 0.6 else 2]  # singles coalesce, carts not
            ttl = 1 if rng.random() < 0.3 else 60  # short ones expire by the sweepers
            got = await post(session, url, RESERVE, lines=lines, ttl=ttl)
            if got is None:
                told.unanswered_reserves += 1
            elif got["reserve"]["__typename"] == "Reservation":
                hold = got["reserve"]
                told.holds[hold["id"]] = sorted(f"{x['sku']}:{x['quantity']}" for x in lines)
                mine.append(hold["id"])
        elif roll < 0.85:
            hold = mine.pop(rng.randrange(len(mine)))
            query = CONFIRM if rng.random() < 0.5 else RELEASE
            got = await post(session, url, query, id=hold)
            answer = None if got is None else next(iter(got.values()))
            if answer and answer["__typename"] in ("Reservation", "ReservationNotPending"):
                told.ended[hold] = answer["status"]
        else:
            await post(session, url, ADJUST_STOCK, sku=rng.choice(SKUS), delta=rng.randint(1, 4))
        await asyncio.sleep(rng.random() * 0.02)


async def rollbacks(database: str, until: float) -> int:
    """Transactions that write ledger rows (and so events) and roll back, until `until`;
    how many rolled back. Connection losses (the PostgreSQL restart) are waited out."""
    done = 0
    rng = random.Random(7)
    while time.monotonic() < until:
        try:
            conn = await asyncpg.connect(database, timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            await asyncio.sleep(0.2)
            continue
        try:
            while time.monotonic() < until:
                tx = conn.transaction()
                await tx.start()
                await conn.execute("SET LOCAL lock_timeout = '500ms'")
                await conn.fetchrow(ADJUST, rng.choice(SKUS), 3, ROLLED_BACK)
                await asyncio.sleep(rng.random() * 0.05)  # open across others' commits
                await tx.rollback()
                done += 1
        # A connection cut mid-statement (the PostgreSQL restart) can also leave asyncpg's
        # protocol mid-operation: InternalClientError ("cannot switch to state ...").
        except (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
        ):
            await asyncio.sleep(0.2)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()
    return done


class Pager:
    """Pages through the feed from a random server, resuming from its last cursor."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.events: list[dict[str, Any]] = []
        self.cursor: str | None = None
        self.retries = 0

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        rng = random.Random(3)
        while True:
            got = await post(session, self.cluster.url(rng), PAGE, after=self.cursor, first=100)
            if got is None:
                self.retries += 1
                await asyncio.sleep(0.1)
                continue
            page = got["stockEvents"]
            assert page["__typename"] == "StockEventConnection", page
            self.events += [edge["node"] for edge in page["edges"]]
            self.cursor = page["pageInfo"]["endCursor"] or self.cursor
            if not page["pageInfo"]["hasNextPage"]:
                if stop.is_set():
                    return
                await asyncio.sleep(0.05)


class Subscriber:
    """Follows the feed over WebSocket, resubscribing after its last cursor whenever the
    stream or the connection ends."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.events: list[dict[str, Any]] = []
        self.resumes = 0

    @property
    def cursor(self) -> str | None:
        return self.events[-1]["cursor"] if self.events else None

    async def run(self, session: aiohttp.ClientSession) -> None:
        rng = random.Random(5)
        while True:
            try:
                socket = await GraphQLWebSocket.connect(
                    session,
                    self.cluster.url(rng),
                    {"authorization": f"Bearer {ADMIN_TOKEN}"},
                )
            except (aiohttp.ClientError, TimeoutError, AssertionError, ValueError):
                await asyncio.sleep(0.1)
                continue
            try:
                subscription = await socket.subscribe(FEED, after=self.cursor)
                while True:
                    item = (await subscription.next(timeout=30))["stockEvents"]
                    assert item["__typename"] == "StockEvent", item
                    self.events.append(item)
            except (SubscriptionError, ConnectionError, TimeoutError, aiohttp.ClientError):
                self.resumes += 1
            finally:
                with contextlib.suppress(Exception):
                    await socket.close()


def as_row(event: dict[str, Any]) -> tuple[Any, ...]:
    return (
        event["cursor"],
        event["kind"],
        event["sku"],
        event["quantityDelta"],
        event["reservedDelta"],
        event["quantity"],
        event["reserved"],
        event["version"],
        event["reservationId"],
        event["reason"],
    )


async def test_the_feed_is_the_ledger_exactly_through_kill_9_and_a_postgresql_restart(
    own_postgres,  # noqa: F811 (the fixture imported above)
    tmp_path,
):
    server_url, stop_db, start_db = own_postgres
    database = await create_database(server_url)
    env = {"DATABASE_URL": database, **SERVER_ENV, "INVENTORY_SWEEP_INTERVAL_SECONDS": "0.2"}
    servers = [ServerProcess(env, log=tmp_path / f"server-{i}.log") for i in range(3)]
    for server in servers:
        await asyncio.to_thread(server.wait_ready)
    cluster = Cluster(env, servers, tmp_path)
    told = Told()
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for sku in SKUS:
                assert await post(session, servers[0].url, CREATE, sku=sku)
                assert await post(session, servers[0].url, THRESHOLD, sku=sku)
            pager, subscriber = Pager(cluster), Subscriber(cluster)
            stop_paging = asyncio.Event()
            paging = asyncio.create_task(pager.run(session, stop_paging))
            following = asyncio.create_task(subscriber.run(session))
            until = time.monotonic() + LOAD_SECONDS
            load = [
                asyncio.create_task(shopper(cluster, told, seed, until, session))
                for seed in range(12)
            ]
            rolling = asyncio.create_task(rollbacks(database, until))

            await asyncio.sleep(LOAD_SECONDS * 0.3)
            os.kill(servers[1].process.pid, signal.SIGKILL)  # mid-flight, no goodbye
            servers[1].process.wait()
            servers[1] = ServerProcess(env, log=tmp_path / "server-1-restarted.log")
            await asyncio.to_thread(servers[1].wait_ready)

            await asyncio.sleep(LOAD_SECONDS * 0.2)
            await asyncio.to_thread(stop_db)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(start_db)

            await asyncio.gather(*load)
            rolled_back = await rolling
            db = await asyncpg.connect(database)
            try:
                rows = await settled(db)
                stop_paging.set()
                await asyncio.wait_for(paging, 20)
                deadline = time.monotonic() + 20
                while len(subscriber.events) < len(rows) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                following.cancel()
                await compare(db, rows, pager, subscriber, told)
            finally:
                await db.close()
            assert rolled_back > 0 and told.holds and told.ended
            assert subscriber.resumes >= 1, "the restarts ended a subscription"
    finally:
        for server in servers:
            server.stop()


async def settled(db: asyncpg.Connection) -> list[asyncpg.Record]:
    """The feed once nothing more will change: no short hold left to lapse (the sweepers
    expire them) and no transaction left open; its rows in feed order."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        due = await db.fetchval(
            "SELECT count(*) FROM reservation WHERE status = 'PENDING' "
            "AND expires_at < now() + interval '30 seconds'"
        )
        if not due:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("short holds were not expired")
    await asyncio.sleep(0.5)  # the last sweep's transaction has ended
    return await db.fetch(EVENT_ROWS)


async def compare(
    db: asyncpg.Connection,
    rows: list[asyncpg.Record],
    pager: Pager,
    subscriber: Subscriber,
    told: Told,
) -> None:
    table = [
        tuple(
            r[k]
            for k in (
                "cursor",
                "kind",
                "sku",
                "quantity_delta",
                "reserved_delta",
                "quantity",
                "reserved",
                "version",
                "reservation_id",
                "reason",
            )
        )
        for r in rows
    ]
    paged = [as_row(e) for e in pager.events]
    subscribed = [as_row(e) for e in subscriber.events]
    assert len(set(paged)) == len(paged), "a duplicate in the pages"
    assert paged == table, first_difference(paged, table)
    assert subscribed == table, first_difference(subscribed, table)

    # Every ledger row since the origin is exactly one event; every other event is a
    # crossing; nothing rolled back is in either.
    ledger = {
        r["id"]: (
            "OFFERED"
            if r["kind"] == "RESERVE" and r["reason"] == "waiting list"
            else KIND[r["kind"]],
            r["quantity_delta"],
            r["reserved_delta"],
            r["reservation_id"],
            r["reason"],
        )
        for r in await db.fetch(LEDGER_ROWS)
    }
    events = {
        r["id"]: (
            r["kind"],
            r["quantity_delta"],
            r["reserved_delta"],
            r["reservation_id"],
            r["reason"],
        )
        for r in rows
        if r["kind"] not in CROSSINGS
    }
    assert events == ledger
    assert all(r["id"] not in ledger for r in rows if r["kind"] in CROSSINGS)
    assert not any(r["reason"] == ROLLED_BACK for r in rows)
    assert {r["kind"] for r in rows} >= {
        "CREATED",
        "RESERVED",
        "CONFIRMED",
        "RELEASED",
        "EXPIRED",
        "ADJUSTED",
    }
    report = await check(db)  # numbers chain per product, versions never go down
    assert report.ok, report.problems

    # Told equals held: every hold a client was told of exists with its lines, every end
    # a client was told is the hold's status, and holds nobody was told of are at most
    # the reserves that got no answer.
    held = {
        r["id"]: sorted(r["lines"])
        for r in await db.fetch(
            "SELECT r.id::text, array_agg(p.sku || ':' || l.quantity) AS lines "
            "FROM reservation r JOIN reservation_line l ON l.reservation_id = r.id "
            "JOIN product p ON p.id = l.product_id WHERE r.status <> 'VOID' GROUP BY r.id"
        )
    }
    for hold, lines in told.holds.items():
        assert held.get(hold) == lines, hold
    statuses = {
        r["id"]: r["status"]
        for r in await db.fetch("SELECT id::text, status::text FROM reservation")
    }
    for hold, status in told.ended.items():
        assert statuses[hold] == status, hold
    assert len(held.keys() - told.holds.keys()) <= told.unanswered_reserves


def first_difference(got: list[Any], want: list[Any]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"at {i}: {a} != {b}"
    return f"lengths {len(got)} != {len(want)}"

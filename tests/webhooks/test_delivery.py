"""Webhook delivery end to end: server processes deliver the feed to a receiver in a
process of its own, which verifies every signature. At the end, what each endpoint
acknowledged is compared with the stock_event table: every event of its kinds after its
creation, once per webhook-id, in feed order (told equals held)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import asyncpg
import psutil

from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import CONFIRM, CREATE_PRODUCT, RELEASE, RESERVE
from tests.support.database import new_sku
from tests.support.graphql_http import GraphQLClient, graphql_client
from tests.webhooks.conftest import (
    CREATE_WEBHOOK,
    DELETE_WEBHOOK,
    WEBHOOKS,
    Receiver,
    delivered,
    feed_after,
    server_env,
    start_servers,
    wait_caught_up,
)

ALERTS = ["LOW_STOCK", "OUT_OF_STOCK", "BACK_IN_STOCK"]

# The process holding an endpoint's delivery lock (its connection's application_name).
LOCK_HOLDER = """
SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.classid = hashtext('inventory.webhook')::oid AND l.objid = $1::int::oid
"""


async def create_webhook(
    client: GraphQLClient, receiver: Receiver, path: str, kinds: list[str] | None = None
) -> dict[str, Any]:
    answer = (await client.execute(CREATE_WEBHOOK, url=receiver.url + path, kinds=kinds))[
        "createWebhook"
    ]
    assert answer["__typename"] == "CreatedWebhook", answer
    await receiver.control(path, secret=answer["secret"], mode="ok")
    webhook: dict[str, Any] = answer["webhook"]
    return webhook


async def churn(client: GraphQLClient, sku: str, holds: int) -> list[dict[str, Any]]:
    """`holds` concurrent reserves of one unit; then the even ones confirmed, the odd
    ones released. Every answer, for comparing with the database."""
    answers = await asyncio.gather(
        *(client.execute(RESERVE, lines=[{"sku": sku, "quantity": 1}]) for _ in range(holds))
    )
    held = [a["reserve"]["id"] for a in answers if a["reserve"]["__typename"] == "Reservation"]
    await asyncio.gather(
        *(client.execute(CONFIRM if i % 2 == 0 else RELEASE, id=id_) for i, id_ in enumerate(held))
    )
    return [a["reserve"] for a in answers]


async def product(client: GraphQLClient, quantity: int) -> str:
    sku = new_sku("WH")
    made = await client.execute(CREATE_PRODUCT, sku=sku, name="Webhook test", quantity=quantity)
    assert made["createProduct"]["__typename"] == "Product"
    return sku


async def webhooks(client: GraphQLClient) -> dict[str, dict[str, Any]]:
    return {w["id"]: w for w in (await client.execute(WEBHOOKS))["webhooks"]}


async def assert_all_delivered(
    db: asyncpg.Connection, receiver: Receiver, path: str, webhook: dict[str, Any]
) -> list[str]:
    await wait_caught_up(db, webhook["id"])
    expected = await feed_after(db, webhook["cursor"], webhook["kinds"])
    got = delivered(receiver, path)
    assert got.events == expected  # every event once, in feed order, nothing else
    return expected


def delivering_server(servers: list[ServerProcess], application: str) -> ServerProcess:
    pid = int(application.rpartition(" ")[2])
    for server in servers:
        if pid in {
            server.process.pid,
            *(c.pid for c in psutil.Process(server.process.pid).children()),
        }:
            return server
    raise AssertionError(f"no server is {application}")


async def test_every_event_reaches_its_endpoints_in_order_through_a_kill(
    own_database: str, own_db: asyncpg.Connection, receiver: Receiver
) -> None:
    """Two server processes; an endpoint for every event and one for threshold alerts.
    The process delivering is killed with -9 in the middle of the load: the other takes
    the endpoints over and resends what was not acknowledged under the same webhook-id."""
    servers = start_servers(server_env(own_database, receiver), 2)
    try:
        async with graphql_client(servers[0].url) as a, graphql_client(servers[1].url) as b:
            everything = await create_webhook(a, receiver, "/all")
            alerts = await create_webhook(b, receiver, "/alerts", ALERTS)
            assert everything["kinds"] is None and sorted(alerts["kinds"]) == sorted(ALERTS)
            sku = await product(a, 30)
            await asyncio.gather(churn(a, sku, 20), churn(b, sku, 20))
            # Who delivers to /all now: kill it while more load goes on.
            async with asyncio.timeout(10):
                while (holder := await own_db.fetchval(LOCK_HOLDER, int(everything["id"]))) is None:
                    await asyncio.sleep(0.05)
            victim = delivering_server(servers, holder)
            survivor = servers[1] if victim is servers[0] else servers[0]
            orphans = psutil.Process(victim.process.pid).children()
            load = asyncio.ensure_future(churn(b if survivor is servers[1] else a, sku, 20))
            os.kill(victim.process.pid, signal.SIGKILL)
            victim.process.wait(10)
            # Its delivery process sees serve gone and stops: nothing delivers orphaned.
            _, alive = psutil.wait_procs(orphans, timeout=10)
            assert alive == []
            await load
            survivor_client = b if survivor is servers[1] else a
            await churn(survivor_client, sku, 30)  # enough to sell out and come back
            got_all = await assert_all_delivered(own_db, receiver, "/all", everything)
            got_alerts = await assert_all_delivered(own_db, receiver, "/alerts", alerts)
            assert len(got_all) >= 60 and got_alerts  # the load made events of both sorts
            state = await webhooks(survivor_client)
            assert state[everything["id"]]["deliveredEvents"] == len(got_all)
            assert state[everything["id"]]["status"] == "ACTIVE"
            assert state[everything["id"]]["lag"] == 0
            assert state[everything["id"]]["createdBy"] == "admin"
            # The survivor delivers now.
            assert await own_db.fetchval(LOCK_HOLDER, int(everything["id"])) is not None
    finally:
        for server in servers:
            server.stop()


async def test_serve_delivers_from_a_nicer_process_of_its_own_and_restarts_it(
    own_database: str, own_db: asyncpg.Connection, receiver: Receiver
) -> None:
    """`serve` delivers from a child process at lower CPU priority (reservations first in
    a rush), not from the process serving requests; killed with -9, the child is started
    again and resumes where the endpoint's progress is: every event once, in order."""
    with ServerProcess(server_env(own_database, receiver)) as server:
        async with graphql_client(server.url) as client:
            hook = await create_webhook(client, receiver, "/all")
            sku = await product(client, 30)
            await churn(client, sku, 10)
            async with asyncio.timeout(10):
                while (holder := await own_db.fetchval(LOCK_HOLDER, int(hook["id"]))) is None:
                    await asyncio.sleep(0.05)
            deliverer = psutil.Process(int(holder.rpartition(" ")[2]))
            serving = psutil.Process(server.process.pid)
            assert deliverer.pid != serving.pid and deliverer.ppid() == serving.pid
            # INVENTORY_WEBHOOK_NICENESS (19) steps nicer, as far as the system allows.
            assert deliverer.nice() == min(19, serving.nice() + 19) > serving.nice()
            # At 19, Linux's idle class as well: any busy server process preempts it.
            if hasattr(os, "SCHED_IDLE"):
                assert os.sched_getscheduler(deliverer.pid) == os.SCHED_IDLE
                assert os.sched_getscheduler(serving.pid) == os.SCHED_OTHER
            load = asyncio.ensure_future(churn(client, sku, 20))
            deliverer.kill()
            async with asyncio.timeout(15):
                while await own_db.fetchval(LOCK_HOLDER, int(hook["id"])) in (None, holder):
                    await asyncio.sleep(0.05)
            await load
            await churn(client, sku, 5)
            got = await assert_all_delivered(own_db, receiver, "/all", hook)
            assert len(got) >= 35 * 2  # each hold made at least two events
            assert server.stop() == 0


async def test_a_receiver_down_for_30_seconds_gets_everything_in_order_when_back(
    own_database: str, own_db: asyncpg.Connection, receiver: Receiver
) -> None:
    env = server_env(own_database, receiver, INVENTORY_WEBHOOK_MAX_AGE_SECONDS="8")
    with ServerProcess(env) as server:
        async with graphql_client(server.url) as client:
            webhook = await create_webhook(client, receiver, "/down")
            sku = await product(client, 10)
            await churn(client, sku, 4)
            await wait_caught_up(own_db, webhook["id"])
            receiver.stop()
            down = time.monotonic()
            await churn(client, sku, 6)
            await asyncio.sleep(15)
            await churn(client, sku, 6)
            # Past INVENTORY_WEBHOOK_MAX_AGE_SECONDS of failures: FAILING, and why.
            state = (await webhooks(client))[webhook["id"]]
            assert state["status"] == "FAILING"
            assert state["attempts"] >= 3 and state["pendingWebhookId"]
            failures = state["recentFailures"]
            assert failures and all(f["statusCode"] is None for f in failures)
            assert {f["webhookId"] for f in failures} == {state["pendingWebhookId"]}
            await asyncio.sleep(max(0.0, 30 - (time.monotonic() - down)))
            receiver.start()
            await receiver.restore()
            await churn(client, sku, 4)
            await assert_all_delivered(own_db, receiver, "/down", webhook)
            state = (await webhooks(client))[webhook["id"]]
            assert state["status"] == "ACTIVE" and state["attempts"] == 0
            assert state["lastSuccessAt"] is not None


async def test_410_disables_an_endpoint_and_a_redirect_is_a_failure(
    own_database: str, own_db: asyncpg.Connection, receiver: Receiver
) -> None:
    with ServerProcess(server_env(own_database, receiver)) as server:
        async with graphql_client(server.url) as client:
            gone = await create_webhook(client, receiver, "/gone")
            moved = await create_webhook(client, receiver, "/moved")
            await receiver.control("/gone", mode="gone")
            await receiver.control("/moved", mode="redirect")
            sku = await product(client, 5)
            async with asyncio.timeout(15):
                while True:
                    state = await webhooks(client)
                    if state[gone["id"]]["status"] == "DISABLED" and any(
                        f["statusCode"] == 307 for f in state[moved["id"]]["recentFailures"]
                    ):
                        break
                    await asyncio.sleep(0.1)
            assert "410" in state[gone["id"]]["disabledReason"]
            assert state[gone["id"]]["recentFailures"][0]["statusCode"] == 410
            redirected = state[moved["id"]]["recentFailures"][0]
            assert "redirect" in redirected["error"] and state[moved["id"]]["status"] == "ACTIVE"
            # Nothing more goes to a disabled endpoint, and no redirect was followed.
            sent = len(receiver.requests("/gone"))
            await churn(client, sku, 3)
            await asyncio.sleep(1.5)
            assert len(receiver.requests("/gone")) == sent == 1
            assert receiver.requests("/elsewhere") == []


async def test_a_stalled_endpoint_delays_neither_reserves_nor_other_endpoints(
    own_database: str, own_db: asyncpg.Connection, receiver: Receiver
) -> None:
    """One endpoint's receiver never answers in time; the other's gets every event, and
    every reserve is answered with what the database holds."""
    with ServerProcess(server_env(own_database, receiver)) as server:
        async with graphql_client(server.url) as client:
            slow = await create_webhook(client, receiver, "/slow")
            fast = await create_webhook(client, receiver, "/fast")
            await receiver.control("/slow", mode="stall")
            sku = await product(client, 50)
            answers = await churn(client, sku, 80)
            await assert_all_delivered(own_db, receiver, "/fast", fast)
            held = [a for a in answers if a["__typename"] == "Reservation"]
            assert len(held) == 50
            statuses = await own_db.fetch(
                "SELECT r.id::text, r.status::text FROM reservation r "
                "JOIN reservation_line l ON l.reservation_id = r.id "
                "JOIN product p ON p.id = l.product_id WHERE p.sku = $1",
                sku,
            )
            assert {r["id"] for r in statuses} == {a["id"] for a in held}
            stock = await own_db.fetchrow(
                "SELECT quantity, reserved FROM product WHERE sku = $1", sku
            )
            assert stock is not None and (stock["quantity"], stock["reserved"]) == (25, 0)
            # The stalled endpoint is still on its first message, timing out.
            state = (await webhooks(client))[slow["id"]]
            assert state["cursor"] == slow["cursor"] and state["lag"] > 0
            async with asyncio.timeout(10):
                while not (await webhooks(client))[slow["id"]]["recentFailures"]:
                    await asyncio.sleep(0.2)
            failure = (await webhooks(client))[slow["id"]]["recentFailures"][0]
            assert failure["statusCode"] is None and "timed out" in failure["error"]
            # SIGTERM with a delivery stalled in flight: it is cancelled and the server
            # exits 0 by itself (stop() kills it, exit -9, after 20 s).
            assert server.stop() == 0


async def test_endpoints_are_checked_limited_and_admin_only(
    own_database: str, receiver: Receiver
) -> None:
    env = server_env(own_database, receiver, INVENTORY_WEBHOOK_MAX_ENDPOINTS="2")
    with ServerProcess(env) as server:
        async with graphql_client(server.url) as client:

            async def create(url: str, kinds: list[str] | None = None) -> dict[str, Any]:
                answer: dict[str, Any] = (
                    await client.execute(CREATE_WEBHOOK, url=url, kinds=kinds)
                )["createWebhook"]
                return answer

            refused = await create(f"http://127.0.0.1:{receiver.port + 1}/x")
            assert refused["__typename"] == "DestinationNotAllowed"
            assert "INVENTORY_WEBHOOK_ALLOWED_HOSTS" in refused["reason"]
            assert (await create("http://10.0.0.1/x"))["__typename"] == "DestinationNotAllowed"
            for bad in ("ftp://127.0.0.1/x", "http://a:b@127.0.0.1/", "not a url"):
                assert (await create(bad)) == {
                    "__typename": "InvalidInput",
                    "field": "url",
                    "message": (await create(bad))["message"],
                }
            assert (await create(receiver.url + "/k", []))["field"] == "kinds"
            first = await create(receiver.url + "/1")
            second = await create(receiver.url + "/2", ["OUT_OF_STOCK", "OUT_OF_STOCK"])
            assert first["secret"].startswith("whsec_") and first["secret"] != second["secret"]
            assert second["webhook"]["kinds"] == ["OUT_OF_STOCK"]
            assert (await create(receiver.url + "/3")) == {
                "__typename": "WebhookLimitReached",
                "limit": 2,
                "message": "there are 2 webhooks already (INVENTORY_WEBHOOK_MAX_ENDPOINTS)",
            }
            id_ = first["webhook"]["id"]
            deleted = (await client.execute(DELETE_WEBHOOK, id=id_))["deleteWebhook"]
            assert deleted["__typename"] == "Webhook" and deleted["id"] == id_
            again = (await client.execute(DELETE_WEBHOOK, id=id_))["deleteWebhook"]
            assert again["__typename"] == "WebhookNotFound"
            assert (await client.execute(DELETE_WEBHOOK, id="x" * 50))["deleteWebhook"][
                "__typename"
            ] == "WebhookNotFound"
            assert (await create(receiver.url + "/3"))["__typename"] == "CreatedWebhook"
            assert set(await webhooks(client)) == {
                second["webhook"]["id"],
                str(int(second["webhook"]["id"]) + 1),
            }
        # Without the admin token: refused, nothing made or shown.
        async with aiohttp.ClientSession(server.url) as http:
            for query, variables in (
                (CREATE_WEBHOOK, {"url": receiver.url + "/4"}),
                (WEBHOOKS, {}),
                (DELETE_WEBHOOK, {"id": second["webhook"]["id"]}),
            ):
                response = await http.post(
                    "/graphql", json={"query": query, "variables": variables}
                )
                body = await response.json()
                assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_internal_destinations_are_refused_without_an_allow_list(gql: GraphQLClient) -> None:
    """The session's server has no INVENTORY_WEBHOOK_ALLOWED_HOSTS: public addresses only."""
    for url in ("http://127.0.0.1:8000/hook", "http://localhost/hook", "http://169.254.169.254/"):
        answer = (await gql.execute(CREATE_WEBHOOK, url=url))["createWebhook"]
        assert answer["__typename"] == "DestinationNotAllowed", answer
        assert answer["url"] == url


async def test_delivery_resumes_after_its_database_connection_is_killed(
    own_database: str, own_db: asyncpg.Connection, receiver: Receiver
) -> None:
    """The webhook connection (and with it the delivery locks) terminated three times
    under load: the process stops delivering, reconnects, takes its endpoint back and
    resends what was not recorded; the receiver still gets every event once, in order."""
    with ServerProcess(server_env(own_database, receiver)) as server:
        async with graphql_client(server.url) as client:
            webhook = await create_webhook(client, receiver, "/cut")
            sku = await product(client, 40)
            for _ in range(3):
                load = asyncio.ensure_future(churn(client, sku, 15))
                async with asyncio.timeout(10):
                    while not await own_db.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name LIKE 'inventory-graphql webhooks %'"
                    ):
                        await asyncio.sleep(0.05)
                await load
            await assert_all_delivered(own_db, receiver, "/cut", webhook)
            assert (await webhooks(client))[webhook["id"]]["status"] == "ACTIVE"


async def test_an_endpoint_behind_the_feeds_retention_is_disabled_not_skipped(
    own_database: str, own_db: asyncpg.Connection, receiver: Receiver
) -> None:
    """Events an endpoint has not delivered are pruned (a retention of under 2 s while
    its receiver fails): the endpoint is disabled, saying why, instead of delivering the
    feed with a hole in it."""
    env = server_env(
        own_database,
        receiver,
        INVENTORY_EVENT_RETENTION_HOURS="0.0005",
        INVENTORY_EVENT_PRUNE_INTERVAL_SECONDS="0.5",
    )
    with ServerProcess(env) as server:
        async with graphql_client(server.url) as client:
            webhook = await create_webhook(client, receiver, "/behind")
            await receiver.control("/behind", mode="fail")
            sku = await product(client, 10)
            await churn(client, sku, 6)
            async with asyncio.timeout(20):
                while (state := (await webhooks(client))[webhook["id"]])["status"] != "DISABLED":
                    await churn(client, sku, 1)  # newer events let the pruner take older ones
                    await asyncio.sleep(0.3)
            assert "pruned" in state["disabledReason"]
            # Every request it got failed: nothing was acknowledged, nothing skipped.
            assert all(r["status"] == 500 for r in receiver.requests("/behind"))

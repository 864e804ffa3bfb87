"""The `waitlistEntry(id)` subscription: a buyer's place in line, live, through a real
server, a real WebSocket with a buyer token, and real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from inventory_graphql.testing.graphql_ws import GraphQLWebSocket, Subscription, SubscriptionError
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RELEASE, RESERVE
from tests.api.test_waitlist import JOIN, LEAVE, SECRET, Client, token
from tests.support.database import check
from tests.support.graphql_http import SERVER_ENV

PLACE = """
subscription Place($id: ID!) {
  waitlistEntry(id: $id) {
    id status position quantity
    reservation { id status lines { sku quantity } }
  }
}
"""


@pytest.fixture(scope="module")
def buyers_server(database_url: str) -> Iterator[ServerProcess]:
    env = {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_BUYER_TOKEN_SECRET": SECRET}
    with ServerProcess(env) as server:
        yield server


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


@pytest.fixture
async def http(buyers_server):
    """GraphQL over HTTP as a buyer (by name) or, with None, anonymously."""
    async with aiohttp.ClientSession(buyers_server.url) as rooted:

        def client(buyer: str | None) -> Client:
            headers = {} if buyer is None else {"Authorization": f"Bearer {token(buyer)}"}
            return Client(rooted, headers)

        yield client


@pytest.fixture
async def socket_of(session, buyers_server):
    """A WebSocket per buyer, authenticated in connection_init."""
    opened: list[GraphQLWebSocket] = []

    async def connect(buyer: str) -> GraphQLWebSocket:
        payload = {"authorization": f"Bearer {token(buyer)}"}
        ws = await GraphQLWebSocket.connect(session, buyers_server.url, payload)
        opened.append(ws)
        return ws

    yield connect
    for ws in opened:
        await ws.close()


async def place(sub: Subscription) -> dict:
    return (await sub.next())["waitlistEntry"]


async def completes(sub: Subscription) -> None:
    assert (await sub.message())["type"] == "complete"


async def joined(http, buyer: str, sku: str, quantity: int = 1) -> dict:
    entry = (await http(buyer)(JOIN, sku=sku, quantity=quantity))["joinWaitlist"]
    assert entry["__typename"] == "WaitlistEntry", entry
    return entry


async def test_positions_move_up_then_the_offer_arrives_and_the_stream_completes(
    http, socket_of, db, make_product
):
    sku = await make_product(1)
    public = (await http(None)(RESERVE, lines=[{"sku": sku, "quantity": 1}]))["reserve"]
    ann, bob, cat = [await joined(http, name, sku) for name in ("ann", "bob", "cat")]
    assert [e["position"] for e in (ann, bob, cat)] == [1, 2, 3]

    cats = await (await socket_of("cat")).subscribe(PLACE, id=cat["id"])
    assert await place(cats) == {
        "id": cat["id"],
        "status": "WAITING",
        "position": 3,
        "quantity": 1,
        "reservation": None,
    }
    anns = await (await socket_of("ann")).subscribe(PLACE, id=ann["id"])
    assert (await place(anns))["position"] == 1

    # Someone ahead leaves: cat moves up.
    await http("bob")(LEAVE, id=bob["id"])
    assert (await place(cats))["position"] == 2
    # The unit comes back: ann is offered it, cat is at the head.
    await http(None)(RELEASE, id=public["id"])
    offer = await place(anns)
    assert (offer["status"], offer["position"]) == ("OFFERED", None)
    assert offer["reservation"]["status"] == "PENDING"
    assert offer["reservation"]["lines"] == [{"sku": sku, "quantity": 1}]
    await completes(anns)
    assert (await place(cats))["position"] == 1

    # ann lets her hold go: it goes on to cat, who sees the offer with its hold.
    released = (await http("ann")(RELEASE, id=offer["reservation"]["id"]))["release"]
    assert released["status"] == "RELEASED"
    cat_offer = await place(cats)
    assert (cat_offer["status"], cat_offer["position"]) == ("OFFERED", None)
    hold = cat_offer["reservation"]
    assert (hold["status"], hold["lines"]) == ("PENDING", [{"sku": sku, "quantity": 1}])
    await completes(cats)

    # What the streams said is what the database holds.
    rows = await db.fetch(
        "SELECT w.buyer, w.status::text, w.reservation_id::text, r.status::text "
        "FROM waitlist_entry w JOIN product p ON p.id = w.product_id "
        "LEFT JOIN reservation r ON r.id = w.reservation_id WHERE p.sku = $1 ORDER BY w.seq",
        sku,
    )
    assert [tuple(r) for r in rows] == [
        ("ann", "OFFERED", offer["reservation"]["id"], "RELEASED"),
        ("bob", "LEFT", None, None),
        ("cat", "OFFERED", hold["id"], "PENDING"),
    ]
    assert (await check(db)).ok


async def test_leaving_completes_and_a_final_entry_answers_once(http, socket_of, make_product):
    sku = await make_product(0)
    dan = await joined(http, "dan", sku, 2)
    socket = await socket_of("dan")
    sub = await socket.subscribe(PLACE, id=dan["id"])
    assert (await place(sub))["status"] == "WAITING"
    await http("dan")(LEAVE, id=dan["id"])
    assert (await place(sub))["status"] == "LEFT"
    await completes(sub)
    # Subscribing to an entry that is over answers it as it is, then completes.
    again = await socket.subscribe(PLACE, id=dan["id"])
    assert (await place(again))["status"] == "LEFT"
    await completes(again)


async def test_other_buyers_unknown_and_malformed_ids_are_refused(http, socket_of, make_product):
    sku = await make_product(0)
    eve = await joined(http, "eve", sku)
    socket = await socket_of("mallory")
    for entry_id, expected in (
        (eve["id"], f"unknown waiting-list entry: {eve['id']}"),
        (str(uuid.uuid4()), "unknown waiting-list entry"),
        ("not-an-entry", "malformed waiting-list entry id not-an-entry"),
    ):
        with pytest.raises(SubscriptionError, match=expected):
            await (await socket.subscribe(PLACE, id=entry_id)).next()
    # The connection stays up for its own entries.
    mine = await joined(http, "mallory", sku)
    sub = await socket.subscribe(PLACE, id=mine["id"])
    assert (await place(sub))["position"] == 2


async def test_entry_subscriptions_count_against_the_client_and_give_back_when_they_end(
    database_url, session, make_product
):
    env = {
        "DATABASE_URL": database_url,
        **SERVER_ENV,
        "INVENTORY_BUYER_TOKEN_SECRET": SECRET,
        "INVENTORY_MAX_SUBSCRIPTIONS_PER_CLIENT": "2",
    }
    with ServerProcess(env) as server:
        async with aiohttp.ClientSession(server.url) as rooted:
            fay = Client(rooted, {"Authorization": f"Bearer {token('fay')}"})
            skus = [await make_product(0) for _ in range(3)]
            entries = [(await fay(JOIN, sku=sku, quantity=1))["joinWaitlist"] for sku in skus]
            payload = {"authorization": f"Bearer {token('fay')}"}
            ws = await GraphQLWebSocket.connect(session, server.url, payload)
            try:
                subs = [await ws.subscribe(PLACE, id=e["id"]) for e in entries[:2]]
                for sub in subs:
                    assert (await place(sub))["status"] == "WAITING"
                refused = await ws.subscribe(PLACE, id=entries[2]["id"])
                with pytest.raises(SubscriptionError) as error:
                    await refused.next()
                assert error.value.errors[0]["extensions"]["code"] == "TOO_MANY_SUBSCRIPTIONS"

                # An entry that leaves completes its stream, and the client may follow another.
                await fay(LEAVE, id=entries[0]["id"])
                assert (await place(subs[0]))["status"] == "LEFT"
                await completes(subs[0])
                again = await ws.subscribe(PLACE, id=entries[2]["id"])
                assert (await place(again))["position"] == 1
            finally:
                await ws.close()

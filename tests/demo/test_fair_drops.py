"""Fair drops in the storefront, in a real browser against `serve --demo`: the buyer
switcher (tokens from the demo's route, or the CLI's), the limit per buyer on the product
page, and the waiting list with its live place in line and the offered hold landing in
the checkout. Each test has its own database, seeded with the demo catalog."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from playwright.async_api import Locator, Page, expect

from inventory_graphql.api.buyers import BuyerTokens
from inventory_graphql.api.trusted_documents import Manifest
from inventory_graphql.api.trusted_manifest import service_checks
from inventory_graphql.testing.server import ServerProcess
from tests.demo.test_trusted_documents import manifest_name, record_documents
from tests.support.database import create_database, stock
from tests.support.graphql_http import ADMIN, SERVER_ENV
from tests.support.paths import ROOT
from tests.support.storefront import assert_not_reloaded, card, card_count

pytestmark = pytest.mark.asyncio(loop_scope="package")  # the browser's loop (conftest.py)

LIVE = 1000  # as in test_storefront.py: a change shows this soon
MANIFEST = ROOT / "trusted-documents.json"
# Units of the demo's small product: a few clicks sell it out.
ENCORE_UNITS = 3

SET_LIMIT = """
mutation Limit($sku: String!, $perBuyer: Int) {
  setPurchaseLimit(sku: $sku, perBuyer: $perBuyer) { __typename }
}"""


@dataclass
class Demo:
    server: ServerProcess
    db: asyncpg.Connection
    http: aiohttp.ClientSession
    manifest: Manifest

    @property
    def url(self) -> str:
        return self.server.url

    async def token(self, buyer: int | str) -> aiohttp.ClientResponse:
        return await self.http.get("/demo/buyer-token", params={"buyer": str(buyer)})

    async def as_buyer(self, buyer: int, operation: str, **variables: Any) -> dict[str, Any]:
        """Run the page's `operation` (the server runs trusted documents only) as buyer
        `buyer`, with a token from the demo's route."""
        query = next(d.body for d in self.manifest if d.name == operation)
        async with await self.token(buyer) as response:
            assert response.status == 200, await response.text()
            token = (await response.json())["token"]
        body = {"query": query, "variables": variables}
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.post("/graphql", json=body, headers=headers) as response:
            answer = await response.json()
        assert "errors" not in answer, answer
        return answer["data"]


@pytest_asyncio.fixture(loop_scope="package")
async def demo(postgres_url, tmp_path) -> AsyncIterator[Demo]:
    """`serve --demo` on a fresh database, with no buyer secret configured (the demo makes
    a random one for the run), running trusted documents only, as production does: every
    document the page sends must be registered."""
    url = await create_database(postgres_url)
    env = {
        "DATABASE_URL": url,
        **SERVER_ENV,
        "INVENTORY_BUYER_TOKEN_SECRET": "",
        "INVENTORY_TRUSTED_DOCUMENTS_ONLY": "on",
    }
    manifest = Manifest.load(MANIFEST, service_checks())
    server = ServerProcess(env, ["--demo"], log=tmp_path / "server.log")
    try:
        await asyncio.to_thread(server.wait_ready)
        db = await asyncpg.connect(url)
        async with aiohttp.ClientSession(server.url) as http:
            yield Demo(server, db, http, manifest)
        await db.close()
    finally:
        assert server.stop() == 0


async def open_as(storefront, demo: Demo, buyer: int, skus: list[str], **kwargs: Any) -> Page:
    page = await storefront.open(demo.url, skus, buyer=buyer, **kwargs)
    await expect(page.get_by_test_id("buyer-name")).to_have_text(f"You are buyer {buyer}")
    return page


async def reserve(page: Page, quantity: int = 1) -> str:
    """Reserve on the product shown; the reserve-message outcome."""
    await page.get_by_test_id("quantity").fill(str(quantity))
    await page.get_by_test_id("reserve").click()
    message = page.get_by_test_id("reserve-message")
    await expect(message).to_have_attribute("data-outcome", re.compile(r"^(?!pending$).+"))
    outcome = await message.get_attribute("data-outcome")
    assert outcome is not None
    return outcome


def hold_by_id(page: Page, hold_id: str) -> Locator:
    return page.locator(f'[data-testid="hold"][data-hold-id="{hold_id}"]')


async def newest_hold(page: Page) -> tuple[Locator, str]:
    newest = page.locator('[data-testid="hold"]:visible').first
    await expect(newest).to_have_attribute("data-status", "PENDING")
    hold_id = await newest.get_attribute("data-hold-id")
    assert hold_id is not None
    return hold_by_id(page, hold_id), hold_id


async def holds_of(db: asyncpg.Connection, sku: str) -> dict[str, tuple[str | None, str, int]]:
    """Every hold on `sku`: id -> (buyer, status, units on its line)."""
    rows = await db.fetch(
        "SELECT r.id::text, r.buyer, r.status::text, l.quantity - l.released AS units "
        "FROM reservation r JOIN reservation_line l ON l.reservation_id = r.id "
        "JOIN product p ON p.id = l.product_id WHERE p.sku = $1",
        sku,
    )
    return {row["id"]: (row["buyer"], row["status"], row["units"]) for row in rows}


async def test_the_token_route_is_the_demos_only(demo, server):
    async with await demo.token(7) as response:
        assert response.status == 200
        assert response.headers["cache-control"] == "no-store"
        assert (await response.json())["buyer"] == "7"
    for bad in ["0", "", "abc", "100001", "1e3", "-3", "７", "9" * 50]:
        async with await demo.token(bad) as response:
            assert response.status == 400, bad
    # A server started without --demo hands out no tokens.
    async with (
        aiohttp.ClientSession(server.url) as http,
        http.get("/demo/buyer-token", params={"buyer": "7"}) as response,
    ):
        assert response.status == 404


async def test_switching_buyers_changes_whose_holds_you_see(storefront, demo):
    sku = "CONSOLE-X"
    page = await open_as(storefront, demo, 1, [sku], ttl=120)
    assert await reserve(page) == "Reservation"
    first, first_id = await newest_hold(page)
    await expect(first).to_have_attribute("data-buyer", "1")

    await page.get_by_test_id("buyer-input").fill("2")
    await page.get_by_test_id("buyer-switch").click()
    await expect(page.get_by_test_id("buyer-name")).to_have_text("You are buyer 2")
    await expect(first).to_be_hidden()
    await expect(page.get_by_test_id("checkout-empty")).to_be_visible()
    await expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "live")
    assert await reserve(page, 2) == "Reservation"
    second, second_id = await newest_hold(page)
    await expect(second).to_have_attribute("data-buyer", "2")
    await expect(card_count(page, sku)).to_have_text("97", timeout=LIVE)

    # Back to buyer 1: its hold again, not buyer 2's. It is followed live over a WebSocket
    # that is buyer 1's again (buyer 2's would be refused the hold): paid elsewhere (the
    # shop's backend), the page shows it.
    await page.get_by_test_id("buyer-input").fill("1")
    await page.get_by_test_id("buyer-switch").click()
    await expect(page.get_by_test_id("buyer-name")).to_have_text("You are buyer 1")
    await expect(second).to_be_hidden()
    await expect(first).to_be_visible()
    await expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "live")
    paid = await demo.as_buyer(1, "Confirm", id=first_id)
    assert paid["confirm"]["__typename"] == "Reservation"
    await expect(first).to_have_attribute("data-status", "CONFIRMED", timeout=LIVE)
    # Buyer 2's hold is buyer 2's alone: buyer 1 pays for it in vain.
    other = await demo.as_buyer(1, "Confirm", id=second_id)
    assert other["confirm"]["__typename"] == "ReservationNotFound"

    # The tab keeps its buyer across a reload.
    await page.reload()
    await expect(page.get_by_test_id("buyer-name")).to_have_text("You are buyer 1")
    assert await holds_of(demo.db, sku) == {
        first_id: ("1", "CONFIRMED", 1),
        second_id: ("2", "PENDING", 2),
    }


async def test_a_token_from_before_a_restart_is_replaced(storefront, demo):
    """A demo server restarted makes a new random secret, so the token a tab kept is
    refused (4403 at connection_init): the page gets a new one for the same buyer."""
    sku = "SNEAKER-42"
    page = await open_as(storefront, demo, 4, [sku])
    stale = BuyerTokens("another run's secret, 32 bytes at least").mint("4")
    await page.evaluate("token => sessionStorage.setItem('buyerToken', token)", stale)
    await page.goto(f"{demo.url}/?sku={sku}")  # no ?buyer=: the tab's token is used
    await expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "live")
    await expect(page.get_by_test_id("buyer-name")).to_have_text("You are buyer 4")
    assert await page.evaluate("sessionStorage.getItem('buyerToken')") != stale
    await expect(card(page, sku)).to_be_visible()
    assert await reserve(page) == "Reservation"
    _, hold_id = await newest_hold(page)
    assert await holds_of(demo.db, sku) == {hold_id: ("4", "PENDING", 1)}


async def test_the_limit_per_buyer_on_the_product_page(storefront, demo):
    sku = "DROP-JACKET"  # the demo's drop: 2 per buyer
    page = await open_as(storefront, demo, 7, [sku])
    await expect(page.get_by_test_id("purchase-limit")).to_have_text("Limit 2 per buyer")
    assert await reserve(page) == "Reservation"
    assert await reserve(page) == "Reservation"

    assert await reserve(page) == "PurchaseLimitExceeded"
    await expect(page.get_by_test_id("reserve-message")).to_have_text(
        re.compile(r"^Limit 2 per buyer: you already have 2\b")
    )
    # Two at once is refused the same way for the next buyer who has one.
    await page.get_by_test_id("buyer-input").fill("8")
    await page.get_by_test_id("buyer-switch").click()
    await expect(page.get_by_test_id("buyer-name")).to_have_text("You are buyer 8")
    assert await reserve(page) == "Reservation"
    assert await reserve(page, 2) == "PurchaseLimitExceeded"
    await expect(page.get_by_test_id("reserve-message")).to_have_text(
        re.compile(r"^Limit 2 per buyer: you already have 1\b")
    )

    held = await holds_of(demo.db, sku)
    assert sorted(str(buyer) for buyer, status, _ in held.values() if status == "PENDING") == [
        "7",
        "7",
        "8",
    ]
    assert (await stock(demo.db, sku))["reserved"] == 3
    await expect(card_count(page, sku)).to_have_text("37", timeout=LIVE)


async def test_without_demo_mode_a_cli_token_makes_the_buyer(
    storefront, database_url, make_product, db, tmp_path
):
    """A server with a buyer secret but no demo route: the page is anonymous (a limited
    product answers BuyerRequired) until it is given a token `buyer-token` printed."""
    secret = "s" * 40
    env = {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_BUYER_TOKEN_SECRET": secret}
    sku = await make_product(5, "Limited print")
    with ServerProcess(env, log=tmp_path / "server.log") as server:
        async with aiohttp.ClientSession(server.url, headers=ADMIN) as http:
            body = {"query": SET_LIMIT, "variables": {"sku": sku, "perBuyer": 1}}
            async with http.post("/graphql", json=body) as response:
                assert (await response.json())["data"]["setPurchaseLimit"]["__typename"] == (
                    "Product"
                )
        page = await storefront.open(server.url, [sku])
        await expect(page.get_by_test_id("buyer-name")).to_have_text("Anonymous shopper")
        await expect(page.get_by_test_id("buyer-form")).to_be_hidden()
        await expect(page.get_by_test_id("purchase-limit")).to_have_text("Limit 1 per buyer")
        assert await reserve(page) == "BuyerRequired"
        await expect(page.get_by_test_id("reserve-message")).to_have_text(
            re.compile("pick a buyer")
        )

        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "inventory_graphql",
            "buyer-token",
            "5",
            env={**os.environ, "INVENTORY_BUYER_TOKEN_SECRET": secret},
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await cli.communicate()
        assert cli.returncode == 0
        token = out.decode().strip()
        await page.goto(f"{server.url}/?sku={sku}&buyerToken={token}")
        await expect(page.get_by_test_id("buyer-name")).to_have_text("You are buyer 5")
        assert "buyerToken" not in page.url  # a credential stays out of the address bar
        await expect(card(page, sku)).to_be_visible()
        assert await reserve(page) == "Reservation"
        _, hold_id = await newest_hold(page)
        assert await holds_of(db, sku) == {hold_id: ("5", "PENDING", 1)}


async def test_the_waiting_list_live_place_and_the_offered_hold(storefront, demo):
    sku = "ENCORE-PASS"
    buyer1 = await open_as(storefront, demo, 1, [sku], ttl=600)
    assert await reserve(buyer1, ENCORE_UNITS) == "Reservation"
    bought, bought_id = await newest_hold(buyer1)

    buyer2 = await open_as(storefront, demo, 2, [sku])
    sent = record_documents(buyer2)
    await expect(buyer2.get_by_test_id("product-view-available")).to_have_text("0")
    # Buyer 3 was in line first.
    ahead = (await demo.as_buyer(3, "JoinWaitlist", sku=sku, quantity=1))["joinWaitlist"]
    assert (ahead["status"], ahead["position"]) == ("WAITING", 1)

    join = buyer2.get_by_test_id("waitlist-join")
    await expect(join).to_have_text("Join the waiting list")
    await join.click()
    place = buyer2.get_by_test_id("waitlist-position")
    await expect(place).to_have_text("You are #2 in line")
    await expect(join).to_be_hidden()

    # Someone joining behind changes nothing; someone ahead leaving moves buyer 2 up, live.
    behind = (await demo.as_buyer(4, "JoinWaitlist", sku=sku, quantity=1))["joinWaitlist"]
    assert behind["position"] == 3
    await asyncio.sleep(0.3)
    await expect(place).to_have_text("You are #2 in line")
    left = await demo.as_buyer(3, "LeaveWaitlist", id=ahead["id"])
    assert left["leaveWaitlist"]["status"] == "LEFT"
    await expect(place).to_have_text("You are #1 in line", timeout=LIVE)

    # Buyer 1 gives one unit back: in the same transaction it is buyer 2's hold, and it
    # lands in buyer 2's checkout with its countdown, without a reload.
    await bought.get_by_test_id("release-one").click()
    await expect(bought.get_by_test_id("line-held")).to_have_text("2")
    offered = buyer2.locator('[data-testid="hold"]:visible').first
    await expect(offered).to_have_attribute("data-status", "PENDING", timeout=LIVE)
    await expect(offered.get_by_test_id("hold-countdown")).to_have_text(re.compile(r"^[45]:\d\d$"))
    await expect(buyer2.get_by_test_id("waitlist-message")).to_have_text(re.compile("Your turn"))
    await expect(place).to_be_hidden()
    offered_id = await offered.get_attribute("data-hold-id")
    assert offered_id is not None
    await expect(buyer2.get_by_test_id("product-view-available")).to_have_text("0")
    await assert_not_reloaded(buyer2)

    entries = await demo.db.fetch(
        "SELECT w.buyer, w.status::text, w.reservation_id::text FROM waitlist_entry w "
        "JOIN product p ON p.id = w.product_id WHERE p.sku = $1 ORDER BY w.seq",
        sku,
    )
    assert [tuple(e) for e in entries] == [
        ("3", "LEFT", None),
        ("2", "OFFERED", offered_id),
        ("4", "WAITING", None),
    ]
    assert await holds_of(demo.db, sku) == {
        bought_id: ("1", "PENDING", 2),
        offered_id: ("2", "PENDING", 1),
    }

    # The offered hold is an ordinary one: paying it buys the unit.
    await offered.get_by_test_id("pay").click()
    await expect(offered).to_have_attribute("data-status", "CONFIRMED")
    assert (await holds_of(demo.db, sku))[offered_id] == ("2", "CONFIRMED", 1)
    # Registered, all of them: over HTTP these (recorded from when the page was live); the
    # subscriptions (WaitlistPlace, Hold) would have been refused, not followed, if not.
    assert {manifest_name(demo.manifest, text) for text in sent} == {"JoinWaitlist", "Confirm"}


async def test_the_flash_sale_crowd_is_not_the_buyer(storefront, demo):
    """The crowd is other shoppers: anonymous holds, none of them the tab's buyer's; on a
    product with a limit per buyer it is refused, and the buyer's own limit is untouched."""
    page = await open_as(storefront, demo, 5, ["SNEAKER-42", "DROP-JACKET"])
    await page.get_by_test_id("flash-sku").fill("SNEAKER-42")  # 12 units
    await page.get_by_test_id("flash-attempts").fill("20")
    await page.get_by_test_id("flash-start").click()
    await expect(page.get_by_test_id("flash-sale")).to_have_attribute("data-state", "done")
    await expect(page.get_by_test_id("flash-succeeded")).to_have_text("12")
    await expect(page.get_by_test_id("flash-failed")).to_have_text("8")
    crowd = await holds_of(demo.db, "SNEAKER-42")
    assert len(crowd) == 12
    assert {buyer for buyer, _, _ in crowd.values()} == {None}

    await page.get_by_test_id("flash-sku").fill("DROP-JACKET")
    await page.get_by_test_id("flash-attempts").fill("3")
    await page.get_by_test_id("flash-start").click()
    await expect(page.get_by_test_id("flash-sale")).to_have_attribute("data-state", "done")
    await expect(page.get_by_test_id("flash-errors")).to_have_text("3")
    assert await holds_of(demo.db, "DROP-JACKET") == {}
    await card(page, "DROP-JACKET").get_by_role("button").click()
    assert await reserve(page, 2) == "Reservation"


async def test_demo_workers_share_the_runs_secret(postgres_url, tmp_path):
    """`serve --demo --workers 2`: the random secret is made once, before the workers
    start, so a token any worker hands out is good at every worker."""
    url = await create_database(postgres_url)
    env = {"DATABASE_URL": url, **SERVER_ENV, "INVENTORY_BUYER_TOKEN_SECRET": ""}
    args = ["--demo", "--workers", "2"]
    with ServerProcess(env, args, log=tmp_path / "server.log") as server:
        db = await asyncpg.connect(url)
        try:
            # A connection per request, so that both workers answer some of them.
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(server.url, connector=connector) as http:
                demo = Demo(server, db, http, Manifest.load(MANIFEST, service_checks()))

                async def buy(buyer: int) -> str:
                    line = {"sku": "CONSOLE-X", "quantity": 1}
                    answer = await demo.as_buyer(buyer, "Reserve", lines=[line], ttl=60)
                    assert answer["reserve"]["__typename"] == "Reservation", answer
                    return answer["reserve"]["id"]

                ids = await asyncio.gather(*(buy(buyer) for buyer in range(1, 41)))
            held = await holds_of(db, "CONSOLE-X")
            assert {hold_id: held[hold_id][0] for hold_id in ids} == {
                hold_id: str(buyer) for buyer, hold_id in enumerate(ids, start=1)
            }
        finally:
            await db.close()


PLACES = "waitlistPlaces"  # waitlist.js's session storage: the tab's places in line


async def remembered(page: Page, places: list[str]) -> None:
    """Wait until the tab remembers exactly these places (buyer NUL sku)."""
    await page.wait_for_function(
        "expected => JSON.stringify(Object.keys(JSON.parse("
        f"sessionStorage.getItem('{PLACES}') || '{{}}'))) === expected",
        arg=json.dumps(places, separators=(",", ":")),
    )


async def test_a_place_in_line_outlives_a_reload(storefront, demo):
    sku = "ENCORE-PASS"
    line = {"sku": sku, "quantity": ENCORE_UNITS}
    held = (await demo.as_buyer(1, "Reserve", lines=[line], ttl=600))["reserve"]
    page = await open_as(storefront, demo, 2, [sku])
    await page.get_by_test_id("waitlist-join").click()
    place = page.get_by_test_id("waitlist-position")
    await expect(place).to_have_text("You are #1 in line")

    # Also remembered: a place the server does not know (a wiped database), forgotten.
    places = json.loads(await page.evaluate(f"sessionStorage.getItem('{PLACES}')"))
    places["2\u0000SNEAKER-42"] = str(uuid.uuid4())
    await page.evaluate(f"places => sessionStorage.setItem('{PLACES}', places)", json.dumps(places))
    await page.reload()
    await expect(page.get_by_test_id("buyer-name")).to_have_text("You are buyer 2")
    await expect(place).to_have_text("You are #1 in line")
    await expect(page.get_by_test_id("waitlist-leave")).to_be_visible()
    await remembered(page, [f"2\u0000{sku}"])

    # Units come free: the offer reaches the reloaded page's checkout.
    released = await demo.as_buyer(1, "Release", id=held["id"])
    assert released["release"]["__typename"] == "Reservation"
    offered = page.locator('[data-testid="hold"]:visible').first
    await expect(offered).to_have_attribute("data-status", "PENDING", timeout=LIVE)
    offered_id = await offered.get_attribute("data-hold-id")
    assert offered_id is not None
    assert (await holds_of(demo.db, sku))[offered_id] == ("2", "PENDING", 1)
    await remembered(page, [])

"""The storefront at `/`, in a real browser, against a real server and PostgreSQL.

Every test makes its own products and opens the page on them (`?sku=`), since the
session's database is shared with the other tests."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil

import aiohttp
import pytest
from playwright.async_api import Page, expect

from inventory_graphql.inventory.catalog import CREATE
from inventory_graphql.testing.server import ServerProcess, free_port
from tests.api.queries import ADJUST_STOCK, RELEASE, RESERVE
from tests.support.database import new_sku, stock
from tests.support.graphql_http import ADMIN, ADMIN_TOKEN, SERVER_ENV
from tests.support.paths import ROOT
from tests.support.pinned_server import PinnedServer
from tests.support.storefront import assert_not_reloaded, card, card_count

pytestmark = pytest.mark.asyncio(loop_scope="package")  # the browser's loop (conftest.py)

# The page must show a change this soon after it happens (the server's own fan-out is
# milliseconds; the rest is headroom for a loaded test machine).
LIVE = 1000


def numbers(row: dict) -> dict:
    return {key: row[key] for key in ("quantity", "reserved", "available")}


async def outcome(page: Page) -> str:
    """The reserve outcome shown (its __typename), once the request has finished."""
    message = page.get_by_test_id("reserve-message")
    finished = re.compile(r"^(?!pending$).+")
    await expect(message).to_have_attribute("data-outcome", finished)
    shown = await message.get_attribute("data-outcome")
    assert shown is not None  # the expect above saw it set
    return shown


async def race_for_last_unit(storefront, server, make_product, ttl: int):
    sku = await make_product(1, "The very last one")
    first, second = [await storefront.open(server.url, [sku], ttl=ttl) for _ in range(2)]
    for page in (first, second):
        await expect(page.get_by_test_id("product-view-available")).to_have_text("1")

    await asyncio.gather(*(page.get_by_test_id("reserve").click() for page in (first, second)))

    outcomes = {await outcome(first): first, await outcome(second): second}
    assert set(outcomes) == {"Reservation", "InsufficientStock"}
    for page in (first, second):
        await expect(card_count(page, sku)).to_have_text("0", timeout=LIVE)
        await expect(card(page, sku)).to_have_attribute("data-state", "sold-out")
        await assert_not_reloaded(page)
    return sku, outcomes["Reservation"], outcomes["InsufficientStock"]


async def test_two_shoppers_race_for_the_last_unit(storefront, server, make_product, db):
    sku, winner, loser = await race_for_last_unit(storefront, server, make_product, ttl=60)

    await expect(winner.get_by_test_id("hold")).to_have_count(1)
    await expect(winner.get_by_test_id("hold-countdown")).to_have_text(re.compile(r"^[01]:\d\d$"))
    await expect(loser.get_by_test_id("reserve-message")).to_have_text(
        re.compile("Sold out: 0 left")
    )
    await expect(loser.get_by_test_id("hold")).to_have_count(0)
    for page in (winner, loser):
        await expect(page.get_by_test_id("product-view-badge")).to_have_text("Sold out")
    assert numbers(await stock(db, sku)) == {"quantity": 1, "reserved": 1, "available": 0}


async def test_an_expired_hold_returns_the_unit_to_both_pages(storefront, server, make_product, db):
    sku, winner, loser = await race_for_last_unit(storefront, server, make_product, ttl=2)

    # Expired by the server's sweeper (every 0.2 s here), pushed to both pages.
    for page in (winner, loser):
        await expect(card_count(page, sku)).to_have_text("1", timeout=10_000)
        await expect(card(page, sku)).not_to_have_attribute("data-state", "sold-out")
        await assert_not_reloaded(page)
    await expect(winner.get_by_test_id("hold")).to_have_attribute("data-status", "EXPIRED")
    await expect(winner.get_by_test_id("pay")).to_be_hidden()
    assert (await stock(db, sku))["available"] == 1


async def test_a_reservation_made_elsewhere_updates_the_page_live(
    storefront, server, make_product, gql
):
    sku = await make_product(5)
    page = await storefront.open(server.url, [sku])
    count = card_count(page, sku)
    await expect(count).to_have_text("5")

    held = await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 2}])
    assert held["reserve"]["__typename"] == "Reservation"
    await expect(count).to_have_text("3", timeout=LIVE)
    await expect(count).to_have_class(re.compile(r"\bflash-down\b"))  # the visual cue
    await expect(card(page, sku).get_by_test_id("stock-detail")).to_have_text("5 on hand · 2 held")

    await gql.execute(ADJUST_STOCK, sku=sku, delta=10, reason="restock")
    await expect(count).to_have_text("13", timeout=LIVE)
    await expect(count).to_have_class(re.compile(r"\bflash-up\b"))
    await assert_not_reloaded(page)


async def test_flash_sale_500_shoppers_for_100_units(storefront, server, make_product, db):
    sku = await make_product(100, "Flash sale console")
    page = await storefront.open(server.url, [sku])
    reserve_requests: list[dict] = []

    def record(request) -> None:
        if request.method == "POST" and request.url.endswith("/graphql"):
            body = json.loads(request.post_data)
            if body["query"].lstrip().startswith("mutation Reserve("):
                reserve_requests.append(body)

    page.on("request", record)
    await page.get_by_test_id("flash-attempts").fill("500")
    await page.get_by_test_id("flash-ttl").fill("60")
    await page.get_by_test_id("flash-start").click()

    panel = page.get_by_test_id("flash-sale")
    await expect(panel).to_have_attribute("data-state", "done", timeout=60_000)
    await expect(page.get_by_test_id("flash-succeeded")).to_have_text("100")
    await expect(page.get_by_test_id("flash-failed")).to_have_text("400")
    await expect(page.get_by_test_id("flash-errors")).to_have_text("0")
    await expect(card_count(page, sku)).to_have_text("0", timeout=LIVE)
    await expect(page.get_by_test_id("flash-available")).to_have_text("0")
    await expect(page.get_by_test_id("flash-status")).to_contain_text("Lowest count shown: 0.")

    # One request per shopper, each the same document with its values as variables.
    assert len(reserve_requests) == 500
    assert len({body["query"] for body in reserve_requests}) == 1
    assert all(
        body["variables"]["lines"] == [{"sku": sku, "quantity": 1}] for body in reserve_requests
    )
    assert sku not in reserve_requests[0]["query"]
    assert numbers(await stock(db, sku)) == {"quantity": 100, "reserved": 100, "available": 0}


async def test_pay_confirms_and_payment_failure_releases(storefront, server, make_product, db):
    sku = await make_product(3, "Limited sneaker")
    page = await storefront.open(server.url, [sku])
    available = page.get_by_test_id("product-view-available")
    await page.get_by_test_id("quantity-more").click()  # 2
    await page.get_by_test_id("reserve").click()
    assert await outcome(page) == "Reservation"
    paid = page.get_by_test_id("hold").first
    await expect(available).to_have_text("1", timeout=LIVE)

    await paid.get_by_test_id("pay").click()
    await expect(paid).to_have_attribute("data-status", "CONFIRMED")
    await expect(paid.get_by_test_id("hold-status")).to_have_text(re.compile("Paid"))
    await expect(page.get_by_test_id("product-view-detail")).to_have_text(
        "1 on hand · 0 held by shoppers", timeout=LIVE
    )
    await expect(available).to_have_text("1")
    assert numbers(await stock(db, sku)) == {"quantity": 1, "reserved": 0, "available": 1}

    await page.get_by_test_id("quantity-less").click()  # 1
    await page.get_by_test_id("reserve").click()
    await expect(page.get_by_test_id("hold")).to_have_count(2)
    failed = page.get_by_test_id("hold").first  # newest first
    await expect(available).to_have_text("0", timeout=LIVE)
    await expect(card(page, sku)).to_have_attribute("data-state", "sold-out")

    await failed.get_by_test_id("payment-fails").click()
    await expect(failed).to_have_attribute("data-status", "RELEASED")
    await expect(available).to_have_text("1", timeout=LIVE)
    assert numbers(await stock(db, sku)) == {"quantity": 1, "reserved": 0, "available": 1}

    statuses = await db.fetch(
        "SELECT id::text, status::text FROM reservation WHERE id = any($1::uuid[])",
        [await paid.get_attribute("data-hold-id"), await failed.get_attribute("data-hold-id")],
    )
    assert dict(statuses) == {
        await paid.get_attribute("data-hold-id"): "CONFIRMED",
        await failed.get_attribute("data-hold-id"): "RELEASED",
    }
    await assert_not_reloaded(page)


async def test_admin_creates_and_restocks_with_the_admin_token(storefront, server, gql, db):
    sku = new_sku("ADMIN")
    # The filter names a product that does not exist yet: the catalog starts empty.
    page = await storefront.open(server.url, [sku], wait_for=[])
    await expect(page.get_by_test_id("catalog-empty")).to_be_visible()
    headers: list[tuple[str, dict]] = []

    def record(request) -> None:
        if request.method == "POST" and request.url.endswith("/graphql"):
            operation = json.loads(request.post_data)["query"].split("(")[0].split()[-1]
            headers.append((operation, request.headers))

    page.on("request", record)
    await page.get_by_test_id("create-sku").fill(sku)
    await page.get_by_test_id("create-name").fill("Admin-made gadget")
    await page.get_by_test_id("create-quantity").fill("4")
    await page.get_by_test_id("create").click()
    message = page.get_by_test_id("admin-message")
    await expect(message).to_have_text(re.compile("needs the admin token"))
    assert await stock(db, sku) == {}

    await page.get_by_test_id("admin-token").fill(ADMIN_TOKEN)
    await page.get_by_test_id("create").click()
    await expect(message).to_have_text(f"Created {sku} with 4 in stock.")
    await expect(card_count(page, sku)).to_have_text("4")

    await page.get_by_test_id("create").click()  # the same sku again
    await expect(message).to_have_attribute("data-outcome", "ProductExists")

    await page.get_by_test_id("restock-sku").fill(sku)
    await page.get_by_test_id("restock-delta").fill("6")
    await page.get_by_test_id("restock").click()
    await expect(message).to_have_text(f"{sku}: 10 on hand, 10 available.")
    await expect(card_count(page, sku)).to_have_text("10")

    # The new product is followed live: a change made elsewhere shows up.
    await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 3}])
    await expect(card_count(page, sku)).to_have_text("7", timeout=LIVE)

    # A shopper's reserve from the page does not carry the admin token.
    await page.get_by_test_id("reserve").click()
    assert await outcome(page) == "Reservation"
    sent = [(operation, h.get("authorization")) for operation, h in headers]
    admin = f"Bearer {ADMIN_TOKEN}"
    assert sent == [
        ("CreateProduct", None),
        ("CreateProduct", admin),
        ("CreateProduct", admin),
        ("AdjustStock", admin),
        ("Reserve", None),
    ]


async def test_more_than_100_products_are_all_followed_live(storefront, server, db, gql):
    skus = [new_sku("MANY") for _ in range(130)]
    for sku in skus:
        assert await db.fetchrow(CREATE, sku, f"Product {sku[-4:]}", 10)
    page = await storefront.open(server.url, skus, wait_for=[skus[0], skus[-1]])
    await expect(page.get_by_test_id("product-card")).to_have_count(130)

    # One in the first subscription (100 skus), one in the second.
    for sku in (skus[3], skus[-1]):
        await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 10}])
        await expect(card_count(page, sku)).to_have_text("0", timeout=LIVE)

    await page.get_by_test_id("catalog-search").fill(skus[-1])
    await expect(page.get_by_test_id("product-card").filter(visible=True)).to_have_count(1)
    await expect(page.get_by_test_id("catalog-count")).to_have_text("1 of 130 products")


async def test_catalog_screenshot_on_desktop_and_phone(storefront, server, db, gql, artifacts):
    catalog = [
        ("CONSOLE-X", "Game console, restock edition", 100, 37),
        ("TICKET-FLOOR", "Concert ticket, floor", 250, 12),
        ("TICKET-BALCONY", "Concert ticket, balcony", 500, 0),
        ("SNEAKER-42", "Limited sneaker, size 42", 12, 9),
        ("VINYL-LTD", "Limited vinyl pressing", 300, 0),
        ("LAST-ONE", "The very last one", 1, 1),
    ]
    skus = []
    for base, name, quantity, held in catalog:
        sku = new_sku(base)[: len(base) + 5]  # e.g. CONSOLE-X-3fa9
        assert await db.fetchrow(CREATE, sku, name, quantity)
        if held:
            await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": held}], ttl=600)
        skus.append(sku)

    page = await storefront.open(server.url, skus, viewport={"width": 1280, "height": 800})
    await expect(card(page, skus[-1])).to_have_attribute("data-state", "sold-out")
    await expect(card(page, skus[3])).to_have_attribute("data-state", "low")
    # A hold in the checkout panel, one unit of it given back.
    await page.get_by_test_id("quantity-more").click()
    await page.get_by_test_id("reserve").click()
    hold = page.get_by_test_id("hold")
    await hold.get_by_test_id("release-one").click()
    await expect(hold.get_by_test_id("line-note")).to_have_text("1 given back")
    await page.mouse.move(0, 0)
    await page.screenshot(path=artifacts / "catalog.png")
    if os.environ.get("INVENTORY_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(artifacts / "catalog.png", ROOT / "frontend-demo" / "screenshot.png")

    phone = await storefront.open(server.url, skus, viewport={"width": 390, "height": 844})
    await phone.screenshot(path=artifacts / "catalog-phone.png", full_page=True)
    # Readable on a phone: nothing wider than the screen, two cards side by side.
    assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
    left, right = [await card(phone, sku).bounding_box() for sku in sorted(skus)[:2]]
    assert left is not None and right is not None  # both cards are laid out
    assert left["y"] == right["y"] and left["x"] < right["x"]


async def test_page_survives_a_server_restart(storefront, database_url, make_product, db, tmp_path):
    sku = await make_product(5, "Survivor")
    later = new_sku("LATER")  # created while the page is disconnected
    env = {"DATABASE_URL": database_url, **SERVER_ENV}
    port = free_port()
    first = PinnedServer(env, port, log=tmp_path / "server.log")
    second = None
    try:
        await asyncio.to_thread(first.wait_ready)
        page = await storefront.open(first.url, [sku, later], wait_for=[sku])
        await expect(card_count(page, sku)).to_have_text("5")
        await page.get_by_test_id("reserve").click()  # a hold the page follows live
        hold = page.get_by_test_id("hold")
        await expect(hold).to_have_attribute("data-status", "PENDING")
        hold_id = await hold.get_attribute("data-hold-id")
        await expect(card_count(page, sku)).to_have_text("4", timeout=LIVE)

        assert await asyncio.to_thread(first.stop) == 0
        status = page.get_by_test_id("connection-status")
        await expect(status).to_have_attribute("data-state", "reconnecting")
        # Created during the outage (straight into the database: no server is up), so the
        # page can only learn of it by re-fetching the catalog when it reconnects.
        assert await db.fetchrow(CREATE, later, "Made meanwhile", 3)

        second = PinnedServer(env, port, log=tmp_path / "server-restarted.log")
        await asyncio.to_thread(second.wait_ready)
        async with aiohttp.ClientSession(second.url) as http:

            async def execute(query: str, **variables) -> dict:
                body = {"query": query, "variables": variables}
                async with http.post("/graphql", json=body, headers=ADMIN) as response:
                    return (await response.json())["data"]

            # Before or after the page is back (a race): the snapshot or the live update.
            released = await execute(RELEASE, id=hold_id)
            assert released["release"]["status"] == "RELEASED"
            changed = await execute(ADJUST_STOCK, sku=sku, delta=4, reason="restock")
            assert changed["adjustStock"]["available"] == 9

            # The page reconnects by itself, resyncs, and finds the new product.
            await expect(status).to_have_attribute("data-state", "live", timeout=15_000)
            await expect(card_count(page, sku)).to_have_text("9", timeout=5_000)
            await expect(card_count(page, later)).to_have_text("3", timeout=5_000)
            # The hold's subscription was sent again too: its first state says it ended.
            await expect(hold).to_have_attribute("data-status", "RELEASED", timeout=LIVE)

            # And it is subscribed again, not just re-fetched.
            for product in (sku, later):
                await execute(RESERVE, lines=[{"sku": product, "quantity": 1}])
            await expect(card_count(page, sku)).to_have_text("8", timeout=LIVE)
            await expect(card_count(page, later)).to_have_text("2", timeout=LIVE)
        await assert_not_reloaded(page)
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0


async def test_a_locked_storefront_works_with_its_token(
    storefront, database_url, make_product, tmp_path
):
    sku = await make_product(4)
    env = {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_STOREFRONT_TOKEN": "shop-key"}
    locked = ServerProcess(env, log=tmp_path / "server.log")
    try:
        await asyncio.to_thread(locked.wait_ready)
        page = await storefront.open(locked.url, [sku], token="shop-key")
        assert "token" not in page.url  # moved out of the address bar
        await page.get_by_test_id("reserve").click()
        assert await outcome(page) == "Reservation"
        await expect(card_count(page, sku)).to_have_text("3", timeout=LIVE)

        stranger = await storefront.open(locked.url, [sku], live=False)
        await expect(stranger.get_by_test_id("notice")).to_contain_text("needs a token")
        await expect(stranger.get_by_test_id("product-card")).to_have_count(0)
    finally:
        assert locked.stop() == 0

"""The checkout panel's hold control in a real browser, against a real server: the
countdown follows the `reservation` subscription, "+5 min" extends up to the server's cap,
a line's stepper gives units back, and "Pay" buys what is left."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime

import pytest
from playwright.async_api import Page, expect

from inventory_graphql.testing.server import ServerProcess
from tests.support.database import stock
from tests.support.graphql_http import SERVER_ENV
from tests.support.storefront import card_count

pytestmark = pytest.mark.asyncio(loop_scope="package")  # the browser's loop (conftest.py)

LIVE = 1000  # as in test_storefront.py: a change shows this soon

HOLD = """
query Hold($id: ID!) {
  reservation(id: $id) {
    status createdAt expiresAt
    lines { sku quantity confirmedQuantity releasedQuantity }
  }
}"""

EXTEND = """
mutation Extend($id: ID!, $ttl: Int!) {
  extendReservation(id: $id, ttlSeconds: $ttl) {
    __typename
    ... on Problem { message }
    ... on Reservation { expiresAt }
  }
}"""


async def hold_on(page: Page, quantity: int = 1):
    """Reserve `quantity` of the product shown; the new hold's row in the checkout panel
    and its id."""
    for _ in range(quantity - 1):
        await page.get_by_test_id("quantity-more").click()
    await page.get_by_test_id("reserve").click()
    await expect(page.get_by_test_id("reserve-message")).to_have_attribute(
        "data-outcome", "Reservation"
    )
    newest = page.get_by_test_id("hold").first
    await expect(newest).to_have_attribute("data-status", "PENDING")
    hold_id = await newest.get_attribute("data-hold-id")
    assert hold_id is not None
    # By id: `.first` would move on to the next hold made.
    return page.locator(f'[data-testid="hold"][data-hold-id="{hold_id}"]'), hold_id


def lifetime(reservation: dict) -> float:
    """Seconds from the hold's creation to its expiry, as the server has them."""
    created = datetime.fromisoformat(reservation["createdAt"])
    return (datetime.fromisoformat(reservation["expiresAt"]) - created).total_seconds()


async def test_the_countdown_ends_when_the_server_expires_the_hold(
    storefront, server, make_product, db
):
    sku = await make_product(2, "Short hold")
    page = await storefront.open(server.url, [sku], ttl=2)
    # The page's clock stands still from here: only the server can end the hold.
    await page.clock.install()
    await page.clock.pause_at(await page.evaluate("Date.now() + 1000"))
    hold, _ = await hold_on(page)
    await expect(hold.get_by_test_id("hold-countdown")).to_have_text("0:02")
    await expect(card_count(page, sku)).to_have_text("1", timeout=LIVE)

    # Expired by the server's sweeper (every 0.2 s here) and pushed within a second.
    await expect(hold).to_have_attribute("data-status", "EXPIRED", timeout=2000 + 1500)
    await expect(hold.get_by_test_id("hold-status")).to_have_text(re.compile("expired"))
    await expect(hold.get_by_test_id("hold-countdown")).to_have_text("—")
    await expect(hold.get_by_test_id("pay")).to_be_hidden()
    await expect(hold.get_by_test_id("extend")).to_be_hidden()
    await expect(card_count(page, sku)).to_have_text("2", timeout=LIVE)
    assert (await stock(db, sku))["available"] == 2


async def test_the_page_clock_running_out_does_not_end_a_hold(
    storefront, server, make_product, gql
):
    sku = await make_product(2, "Slow bank")
    page = await storefront.open(server.url, [sku], ttl=60)
    await page.clock.install()
    hold, hold_id = await hold_on(page)
    await expect(hold.get_by_test_id("hold-countdown")).to_have_text(re.compile(r"^[01]:\d\d$"))

    # Two minutes pass on this page only (a laptop woken from sleep, a wrong clock).
    await page.clock.fast_forward("02:00")
    await expect(hold.get_by_test_id("hold-countdown")).to_have_text("0:00")
    await expect(hold.get_by_test_id("hold-status")).to_have_text(re.compile("Time is up"))
    await expect(hold).to_have_attribute("data-status", "PENDING")
    await expect(hold.get_by_test_id("pay")).to_be_enabled()

    # The server still holds it, so paying works.
    await hold.get_by_test_id("pay").click()
    await expect(hold).to_have_attribute("data-status", "CONFIRMED")
    assert (await gql.execute(HOLD, id=hold_id))["reservation"]["status"] == "CONFIRMED"


async def test_plus_five_minutes_extends_the_hold(storefront, server, make_product, gql):
    sku = await make_product(2, "Needs 3-D Secure")
    page = await storefront.open(server.url, [sku], ttl=60)
    hold, hold_id = await hold_on(page)
    countdown = hold.get_by_test_id("hold-countdown")
    await expect(countdown).to_have_text(re.compile(r"^[01]:\d\d$"))

    await hold.get_by_test_id("extend").click()
    await expect(countdown).to_have_text(re.compile(r"^(4:5\d|5:00)$"))
    await expect(hold.get_by_test_id("hold-status")).to_have_text("Held 5 more minutes.")
    await expect(hold.get_by_test_id("extend")).to_be_enabled()
    held = (await gql.execute(HOLD, id=hold_id))["reservation"]
    assert held["status"] == "PENDING"
    assert 300 <= lifetime(held) < 330

    # Extended by someone else (the shop's backend): the subscription brings it here.
    extended = await gql.execute(EXTEND, id=hold_id, ttl=900)
    assert extended["extendReservation"]["__typename"] == "Reservation"
    await expect(countdown).to_have_text(re.compile(r"^1[45]:\d\d$"), timeout=LIVE)


async def test_plus_five_minutes_is_disabled_with_the_servers_reason_at_the_cap(
    storefront, database_url, make_product, tmp_path
):
    sku = await make_product(2, "Capped hold")
    env = {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_MAX_HOLD_SECONDS": "120"}
    capped = ServerProcess(env, log=tmp_path / "server.log")
    try:
        await asyncio.to_thread(capped.wait_ready)
        page = await storefront.open(capped.url, [sku], ttl=60)
        hold, hold_id = await hold_on(page)
        extend = hold.get_by_test_id("extend")

        await extend.click()  # 5 more minutes would pass the 2-minute cap
        await expect(extend).to_be_disabled()
        reason = hold.get_by_test_id("extend-reason")
        await expect(reason).not_to_be_empty()
        await expect(extend).to_have_attribute("title", await reason.text_content() or "")
        await expect(hold).to_have_attribute("data-status", "PENDING")
        await expect(hold.get_by_test_id("hold-countdown")).to_have_text(re.compile(r"^[01]:\d\d$"))

        # The reason is the server's own, and the refused request changed nothing.
        response = await page.request.post(
            f"{capped.url}/graphql",
            data={"query": EXTEND, "variables": {"id": hold_id, "ttl": 300}},
        )
        answer = (await response.json())["data"]["extendReservation"]
        assert answer["__typename"] == "HoldLimitReached"
        await expect(reason).to_have_text(answer["message"])
        response = await page.request.post(
            f"{capped.url}/graphql", data={"query": HOLD, "variables": {"id": hold_id}}
        )
        assert 59 <= lifetime((await response.json())["data"]["reservation"]) <= 61
    finally:
        assert capped.stop() == 0


async def test_a_stepper_gives_back_a_unit_and_pay_buys_what_is_left(
    storefront, server, make_product, gql, db
):
    sku = await make_product(5, "Cart shrinks")
    page = await storefront.open(server.url, [sku], ttl=120)
    available = page.get_by_test_id("product-view-available")
    hold, hold_id = await hold_on(page, quantity=3)
    line = hold.get_by_test_id("hold-line")
    await expect(line.get_by_test_id("line-held")).to_have_text("3")
    await expect(available).to_have_text("2", timeout=LIVE)

    await line.get_by_test_id("release-one").click()
    await expect(line.get_by_test_id("line-held")).to_have_text("2")
    await expect(line.get_by_test_id("line-note")).to_have_text("1 given back")
    await expect(available).to_have_text("3", timeout=LIVE)  # the unit is on sale again
    await expect(hold).to_have_attribute("data-status", "PENDING")
    assert (await stock(db, sku))["reserved"] == 2

    await hold.get_by_test_id("pay").click()
    await expect(hold).to_have_attribute("data-status", "CONFIRMED")
    await expect(hold.get_by_test_id("hold-status")).to_have_text(re.compile("Paid"))
    await expect(line.get_by_test_id("line-held")).to_have_text("2")  # bought
    await expect(page.get_by_test_id("product-view-detail")).to_have_text(
        "3 on hand · 0 held by shoppers", timeout=LIVE
    )
    row = await stock(db, sku)
    assert (row["quantity"], row["reserved"], row["available"]) == (3, 0, 3)
    held = (await gql.execute(HOLD, id=hold_id))["reservation"]
    assert held["status"] == "CONFIRMED"
    assert held["lines"] == [
        {"sku": sku, "quantity": 3, "confirmedQuantity": 2, "releasedQuantity": 1}
    ]


async def test_a_hold_refused_a_subscription_is_followed_once_one_is_free(
    storefront, database_url, make_product, tmp_path
):
    sku = await make_product(5, "Many holds")
    # Room for the catalog's availability and one hold per WebSocket.
    env = {
        "DATABASE_URL": database_url,
        **SERVER_ENV,
        "INVENTORY_MAX_SUBSCRIPTIONS_PER_CONNECTION": "2",
    }
    tight = ServerProcess(env, log=tmp_path / "server.log")
    try:
        await asyncio.to_thread(tight.wait_ready)
        page = await storefront.open(tight.url, [sku], ttl=120)
        first, _ = await hold_on(page)
        second, second_id = await hold_on(page)
        await expect(second.get_by_test_id("hold-status")).to_have_text(
            re.compile("^No live status: ")
        )

        # The first hold ends, its subscription with it: the second is followed now.
        await first.get_by_test_id("pay").click()
        await expect(first).to_have_attribute("data-status", "CONFIRMED")
        status = second.get_by_test_id("hold-status")
        await expect(status).to_have_text("Held for you until the timer runs out.", timeout=5000)
        response = await page.request.post(
            f"{tight.url}/graphql",
            data={"query": EXTEND, "variables": {"id": second_id, "ttl": 900}},
        )
        assert (await response.json())["data"]["extendReservation"]["__typename"] == "Reservation"
        countdown = second.get_by_test_id("hold-countdown")
        await expect(countdown).to_have_text(re.compile(r"^1[45]:\d\d$"), timeout=LIVE)
    finally:
        assert tight.stop() == 0

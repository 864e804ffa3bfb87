"""The storefront in a real browser against a server that runs trusted documents only (as
production does): every document the page sends is registered, and it works."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import pytest_asyncio
from playwright.async_api import Page, WebSocket, expect

from inventory_graphql.api.trusted_documents import Manifest
from inventory_graphql.api.trusted_manifest import service_checks
from inventory_graphql.testing.server import ServerProcess
from tests.support.database import stock
from tests.support.graphql_http import ADMIN_TOKEN, SERVER_ENV
from tests.support.paths import ROOT
from tests.support.storefront import card_count

pytestmark = pytest.mark.asyncio(loop_scope="package")  # the browser's loop (conftest.py)

LIVE = 1000  # as in test_storefront.py: a change shows this soon


@pytest_asyncio.fixture(loop_scope="package")
async def trusted_only(database_url, tmp_path):
    env = {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_TRUSTED_DOCUMENTS_ONLY": "on"}
    server = ServerProcess(env, log=tmp_path / "server.log")
    try:
        await asyncio.to_thread(server.wait_ready)
        yield server
    finally:
        assert server.stop() == 0


def record_documents(page: Page) -> list[str]:
    """Every document the page sends, over HTTP and in WebSocket subscribe messages."""
    sent: list[str] = []

    def http(request) -> None:
        if request.method == "POST" and request.url.endswith("/graphql"):
            sent.append(json.loads(request.post_data)["query"])

    def websocket(ws: WebSocket) -> None:
        def frame(payload: str | bytes) -> None:
            message = json.loads(payload)
            if message.get("type") == "subscribe":
                sent.append(message["payload"]["query"])

        ws.on("framesent", frame)

    page.on("request", http)
    page.on("websocket", websocket)
    return sent


async def test_the_demo_runs_with_trusted_documents_only(
    storefront, trusted_only, make_product, db
):
    manifest = Manifest.load(ROOT / "trusted-documents.json", service_checks())
    sku = await make_product(3, "Trusted sneaker")
    page = await storefront.open(trusted_only.url, [sku])
    sent = record_documents(page)
    await page.reload()  # recorded from the start: the catalog query and the subscription
    await expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "live")
    available = page.get_by_test_id("product-view-available")
    await expect(available).to_have_text("3")

    # Reserve two, watch the live count fall, extend, give one back, pay for the other.
    await page.get_by_test_id("quantity-more").click()
    await page.get_by_test_id("reserve").click()
    hold = page.get_by_test_id("hold").first
    await expect(hold).to_have_attribute("data-status", "PENDING")
    await expect(card_count(page, sku)).to_have_text("1", timeout=LIVE)
    await hold.get_by_test_id("extend").click()
    await expect(hold.get_by_test_id("hold-countdown")).to_have_text(re.compile(r"^(4:5\d|5:00)$"))
    await hold.get_by_test_id("release-one").click()
    await expect(hold.get_by_test_id("line-held")).to_have_text("1")
    await expect(card_count(page, sku)).to_have_text("2", timeout=LIVE)
    await hold.get_by_test_id("pay").click()
    await expect(hold).to_have_attribute("data-status", "CONFIRMED")
    await expect(card_count(page, sku)).to_have_text("2", timeout=LIVE)

    # Reserve the last two and let the payment fail: they come back.
    await page.get_by_test_id("reserve").click()
    await expect(page.get_by_test_id("reserve-message")).to_have_attribute(
        "data-outcome", "Reservation"
    )
    await expect(page.get_by_test_id("hold")).to_have_count(2)
    failed = page.get_by_test_id("hold").first  # newest first
    await expect(failed).to_have_attribute("data-status", "PENDING")
    await expect(card_count(page, sku)).to_have_text("0", timeout=LIVE)
    await failed.get_by_test_id("payment-fails").click()
    await expect(failed).to_have_attribute("data-status", "RELEASED")
    await expect(card_count(page, sku)).to_have_text("2", timeout=LIVE)

    # The admin panel's documents are registered too (it also sends the admin token).
    await page.get_by_test_id("admin-token").fill(ADMIN_TOKEN)
    await page.get_by_test_id("restock-sku").fill(sku)
    await page.get_by_test_id("restock-delta").fill("4")
    await page.get_by_test_id("restock").click()
    await expect(page.get_by_test_id("admin-message")).to_have_text(
        re.compile(f"{sku}: 6 on hand, 6 available")
    )
    await expect(card_count(page, sku)).to_have_text("6", timeout=LIVE)

    row = await stock(db, sku)
    assert (row["quantity"], row["reserved"], row["available"]) == (6, 0, 6)
    names = {manifest_name(manifest, text) for text in sent}
    assert names == {
        "Products",
        "Availability",
        "Reserve",
        "Hold",
        "Extend",
        "Confirm",
        "Release",
        "AdjustStock",
    }


def manifest_name(manifest: Manifest, text: str) -> str:
    assert manifest.is_trusted(text), f"the page sent a document that is not registered: {text}"
    return next(document.name for document in manifest if document.body == text)

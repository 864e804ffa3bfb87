"""Browser fixtures: Debian's Chromium driven by Playwright, and a storefront page that
fails the test on any uncaught JavaScript error."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from inventory_graphql.testing.server import ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
# A Playwright browser download cannot work on this machine; Debian's Chromium does.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        reason = f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("INVENTORY_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """tests/artifacts/ (git-ignored): what a run leaves behind to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


class Storefront:
    """Opens storefront pages in fresh browser contexts (one per shopper)."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.page_errors: list[str] = []

    async def open(
        self,
        base_url: str,
        skus: list[str] | None = None,
        ttl: int | None = None,
        viewport: dict[str, int] | None = None,
        wait_for: list[str] | None = None,
        token: str | None = None,
        live: bool = True,
    ) -> Page:
        """A page on `?sku=...&ttl=...&token=...`; unless `live` is false, once it is live
        and shows every sku in `wait_for` (default: all of `skus`)."""
        context = await self.browser.new_context(
            viewport=viewport or {"width": 1280, "height": 900}
        )
        page = await context.new_page()
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        params = []
        if skus:
            params.append(f"sku={','.join(skus)}")
        if ttl is not None:
            params.append(f"ttl={ttl}")
        if token is not None:
            params.append(f"token={token}")
        await page.goto(f"{base_url}/?{'&'.join(params)}")
        if not live:
            return page
        await expect(page.get_by_test_id("connection-status")).to_have_attribute(
            "data-state", "live"
        )
        for sku in skus if wait_for is None else wait_for:
            await expect(card(page, sku)).to_be_visible()
        # Set once; still there later proves that the page was never reloaded.
        await page.evaluate("window.sameDocument = true")
        return page


@pytest.fixture
async def storefront(browser: Browser) -> AsyncIterator[Storefront]:
    front = Storefront(browser)
    yield front
    assert front.page_errors == [], "uncaught errors in the page"


def card(page: Page, sku: str):
    return page.locator(f'[data-testid="product-card"][data-sku="{sku}"]')


def card_count(page: Page, sku: str):
    """The available count on a product's catalog card."""
    return card(page, sku).get_by_test_id("available")


async def assert_not_reloaded(page: Page) -> None:
    assert await page.evaluate("window.sameDocument === true"), "the page was reloaded"


class PinnedServer(ServerProcess):
    """ServerProcess on a port chosen by the test, so that a restart can reuse it."""

    def __init__(self, env: dict[str, str], port: int, log: Path | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        cmd = [sys.executable, "-m", "inventory_graphql", "serve", "--port", str(port)]
        with contextlib.ExitStack() as stack:
            # Appending: a restart on the same port adds to the same log. The child holds
            # its own descriptor; ours is closed once it has started.
            out = subprocess.DEVNULL if log is None else stack.enter_context(log.open("ab"))
            self.process = subprocess.Popen(
                [*cmd, "--log-level", "warning"],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

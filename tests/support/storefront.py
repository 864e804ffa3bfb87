"""The storefront page in a browser: a shopper's page opened on some skus, and locators
for what the tests read off it."""

from __future__ import annotations

from playwright.async_api import Browser, BrowserContext, Locator, Page, ViewportSize, expect


class Storefront:
    """Opens storefront pages in fresh browser contexts (one per shopper)."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.page_errors: list[str] = []
        self.contexts: list[BrowserContext] = []

    async def open(
        self,
        base_url: str,
        skus: list[str] | None = None,
        ttl: int | None = None,
        viewport: ViewportSize | None = None,
        wait_for: list[str] | None = None,
        token: str | None = None,
        live: bool = True,
        buyer: int | None = None,
    ) -> Page:
        """A page on `?sku=...&ttl=...&token=...&buyer=...`; unless `live` is false, once it is live
        and shows every sku in `wait_for` (default: all of `skus`)."""
        context = await self.browser.new_context(
            viewport=viewport or {"width": 1280, "height": 900}
        )
        self.contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        params = []
        if skus:
            params.append(f"sku={','.join(skus)}")
        if ttl is not None:
            params.append(f"ttl={ttl}")
        if token is not None:
            params.append(f"token={token}")
        if buyer is not None:
            params.append(f"buyer={buyer}")
        await page.goto(f"{base_url}/?{'&'.join(params)}")
        if not live:
            return page
        await expect(page.get_by_test_id("connection-status")).to_have_attribute(
            "data-state", "live"
        )
        for sku in (skus or []) if wait_for is None else wait_for:
            await expect(card(page, sku)).to_be_visible()
        # Set once; still there later proves that the page was never reloaded.
        await page.evaluate("window.sameDocument = true")
        return page

    async def close(self) -> None:
        """Close this test's pages (the browser is the package's)."""
        for context in self.contexts:
            await context.close()


def card(page: Page, sku: str) -> Locator:
    """A product's card in the catalog."""
    return page.locator(f'[data-testid="product-card"][data-sku="{sku}"]')


def card_count(page: Page, sku: str) -> Locator:
    """The available count on a product's catalog card."""
    return card(page, sku).get_by_test_id("available")


async def assert_not_reloaded(page: Page) -> None:
    """The page is the document Storefront.open loaded (it flagged it then)."""
    assert await page.evaluate("window.sameDocument === true"), "the page was reloaded"

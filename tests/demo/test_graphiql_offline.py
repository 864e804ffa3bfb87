"""GraphiQL in a real browser that cannot reach the internet: every request to another
host is aborted, so the page works only if the service serves all of it."""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, Request, Route, expect

from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RESERVE
from tests.support.paths import ROOT

pytestmark = pytest.mark.asyncio(loop_scope="package")  # the browser's loop (conftest.py)

# The README's picture; refreshed only when asked, so a test run leaves the checkout clean.
SCREENSHOT = ROOT / "docs" / "graphiql.png"
UPDATE_SCREENSHOT = os.environ.get("INVENTORY_UPDATE_SCREENSHOTS") == "1"


# Playwright's init scripts are not the page's, so the policy does not stop this one.
RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.cspViolations.push(`${event.effectiveDirective} ${event.blockedURI}`);
});
"""


class Offline:
    """A browser context where only the server's own host answers."""

    def __init__(self, context: BrowserContext, server: ServerProcess) -> None:
        self.context = context
        self.host = urllib.parse.urlsplit(server.url).netloc
        self.blocked: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.pages: list[Page] = []

    async def route(self, route: Route, request: Request) -> None:
        if urllib.parse.urlsplit(request.url).netloc == self.host:
            await route.continue_()
        else:
            self.blocked.append(request.url)
            await route.abort("internetdisconnected")

    async def open(self, url: str) -> tuple[Page, dict[str, str]]:
        page = await self.context.new_page()
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on(
            "console",
            lambda message: (
                self.console_errors.append(message.text) if message.type == "error" else None
            ),
        )
        await page.add_init_script(RECORD_VIOLATIONS)
        response = await page.goto(url)
        assert response is not None and response.status == 200
        self.pages.append(page)
        return page, await response.all_headers()

    async def violations(self) -> list[str]:
        found: list[str] = []
        for page in self.pages:
            found += await page.evaluate("window.cspViolations")
        return found


@pytest_asyncio.fixture(loop_scope="package")
async def offline(browser: Browser, server: ServerProcess) -> AsyncIterator[Offline]:
    context = await browser.new_context(viewport={"width": 1280, "height": 720})
    offline = Offline(context, server)
    # WebSockets do not pass through context.route: the page's own CSP limits those.
    await context.route("**/*", offline.route)
    yield offline
    violations = await offline.violations()
    await context.close()
    assert violations == [], "the page's Content-Security-Policy refused something it needs"
    assert offline.blocked == [], "the page asked another host"
    assert offline.page_errors == [], "uncaught errors in the page"
    assert offline.console_errors == [], "console errors"


def graphiql_url(server: ServerProcess, query: str) -> str:
    return f"{server.url}/graphql?{urllib.parse.urlencode({'q': query})}"


async def run(page: Page) -> None:
    await page.get_by_role("button", name=re.compile("Execute query")).click()


def result(page: Page):
    return page.locator(".graphiql-response .CodeMirror-code")


async def test_graphiql_runs_a_query_and_lists_reserve_with_no_internet(
    offline, server, make_product, artifacts
):
    sku = await make_product(3, "Offline lamp")
    query = f"""query Offline {{
  products(skus: ["{sku}"]) {{
    sku
    name
    available
  }}
}}
"""
    page, headers = await offline.open(graphiql_url(server, query))

    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-eval" not in policy and "http" not in policy

    await run(page)
    await expect(result(page)).to_contain_text(f'"sku": "{sku}"')
    await expect(result(page)).to_contain_text('"available": 3')

    await page.get_by_role("button", name="Show Documentation Explorer").click()
    docs = page.locator(".graphiql-doc-explorer")
    await docs.get_by_role("link", name="Mutation", exact=True).click()
    await expect(
        docs.locator(".graphiql-doc-explorer-field-name", has_text="reserve").first
    ).to_be_visible()
    await expect(docs).to_contain_text("reserve(")

    await page.screenshot(path=artifacts / "graphiql.png")
    if UPDATE_SCREENSHOT:
        shutil.copyfile(artifacts / "graphiql.png", SCREENSHOT)


async def test_graphiql_subscribes_over_the_same_host(offline, server, make_product, gql):
    sku = await make_product(5, "Offline kettle")
    query = f'subscription {{ availability(skus: ["{sku}"]) {{ sku available }} }}'
    page, _ = await offline.open(graphiql_url(server, query))

    await run(page)
    await expect(result(page)).to_contain_text('"available": 5')
    answer = await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 2}], ttl=60)
    assert answer["reserve"]["__typename"] == "Reservation"
    await expect(result(page)).to_contain_text('"available": 3')

"""Browser fixtures: Debian's Chromium driven by Playwright, and a storefront page that
fails the test on any uncaught JavaScript error."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import asyncpg
import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from inventory_graphql.testing.server import ServerProcess
from tests.support.graphql_http import GraphQLClient, graphql_client
from tests.support.storefront import Storefront

# One browser for the package (starting Playwright and Chromium took ~1 s a test); each
# test opens its own contexts and closes them. Playwright's objects belong to the event
# loop that made them, so the package's tests, and the async fixtures they use, run in one
# loop: the modules say `pytestmark = pytest.mark.asyncio(loop_scope="package")`, and `db`
# and `gql` are redefined here in that loop.
LOOP: Final = "package"

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


@pytest_asyncio.fixture(scope="package", loop_scope=LOOP)
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


@pytest_asyncio.fixture(loop_scope=LOOP)
async def storefront(browser: Browser) -> AsyncIterator[Storefront]:
    front = Storefront(browser)
    yield front
    await front.close()
    assert front.page_errors == [], "uncaught errors in the page"


@pytest_asyncio.fixture(loop_scope=LOOP)
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest_asyncio.fixture(loop_scope=LOOP)
async def gql(server: ServerProcess) -> AsyncIterator[GraphQLClient]:
    async with graphql_client(server.url) as client:
        yield client

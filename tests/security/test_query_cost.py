"""Cost, variables and time limits through a real server: what is too expensive is refused
before it runs, and a query that waits too long is answered TIMEOUT while mutations and
the reserve deadline keep their meaning."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import asyncpg
import pytest

from inventory_graphql.api.query_cost import costliest_allowed_query
from inventory_graphql.api.schema import MAX_QUERY_COST, MAX_VARIABLE_VALUES
from inventory_graphql.inventory.catalog import CREATE
from inventory_graphql.testing.graphql_ws import AVAILABILITY, GraphQLWebSocket
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import PRODUCT_FIELDS, RESERVE
from tests.support.database import create_database, new_sku, stock
from tests.support.graphql_http import SERVER_ENV

ISSUE_QUERY = (
    "{ " + " ".join(f"a{i}: products(first: 1000) {{ {PRODUCT_FIELDS} }}" for i in range(20)) + " }"
)
PAGE = f"query Page($n: Int) {{ products(first: $n) {{ {PRODUCT_FIELDS} }} }}"


async def post(url: str, query: str, **variables: object) -> tuple[int, dict, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/graphql", json={"query": query, "variables": variables}) as r,
    ):
        return r.status, await r.json(), dict(r.headers)


def code(body: dict) -> str:
    return body["errors"][0]["extensions"]["code"]


async def test_issue_13s_query_is_refused_naming_its_cost_and_the_limit(server):
    status, body, _ = await post(server.url, ISSUE_QUERY)
    assert status == 200 and body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "QUERY_TOO_EXPENSIVE"
    assert error["extensions"]["cost"] == 161_000
    assert error["extensions"]["limit"] == MAX_QUERY_COST
    assert "costs 161000" in error["message"] and f"limit is {MAX_QUERY_COST}" in error["message"]


async def test_the_costliest_allowed_query_runs(server, make_product):
    await make_product(1)  # at least one product on every page
    status, body, _ = await post(server.url, costliest_allowed_query())
    assert status == 200 and "errors" not in body, body.get("errors")
    assert len(body["data"]) == 20 and all(body["data"].values())


async def test_a_page_is_priced_by_the_size_its_variables_ask_for(server, make_product):
    await make_product(1)
    status, body, _ = await post(server.url, PAGE, n=10)
    assert status == 200 and "errors" not in body and 1 <= len(body["data"]["products"]) <= 10
    status, body, _ = await post(server.url, PAGE, n=1000)  # 50 + 1,000 x 8 = 8,050
    assert code(body) == "QUERY_TOO_EXPENSIVE" and body["errors"][0]["extensions"]["cost"] == 8050


async def test_variables_too_big_to_coerce_are_refused_over_http_and_websocket(server):
    many = [1] * 20_000  # ~60 KB: under the body cap, but 20,000 values
    status, body, _ = await post(
        server.url, "query($s: [String!]) { products(skus: $s) { sku } }", s=many
    )
    assert status == 200 and code(body) == "VARIABLES_TOO_LARGE"
    assert f"more than {MAX_VARIABLE_VALUES} values" in body["errors"][0]["message"]
    deep: object = "x"
    for _ in range(20):
        deep = [deep]
    status, body, _ = await post(
        server.url, "query($s: [String!]) { products(skus: $s) { sku } }", s=deep
    )
    assert code(body) == "VARIABLES_TOO_LARGE" and "deeper than" in body["errors"][0]["message"]

    async with aiohttp.ClientSession() as session:
        socket = await GraphQLWebSocket.connect(session, server.url)
        refused = await socket.subscribe(AVAILABILITY, skus=["A"] * (MAX_VARIABLE_VALUES + 1))
        message = await refused.message()
        assert message["type"] == "error"
        assert message["payload"][0]["extensions"]["code"] == "VARIABLES_TOO_LARGE"
        await socket.close()


# --- the time budget, on a database of its own (a table lock would stall other tests) ---

BUDGET = 0.5


@pytest.fixture(scope="module")
def slow_database(postgres_url):
    return asyncio.run(create_database(postgres_url))


@pytest.fixture(scope="module")
def budget_server(slow_database, tmp_path_factory):
    env = {
        "DATABASE_URL": slow_database,
        **SERVER_ENV,
        "INVENTORY_QUERY_TIMEOUT_SECONDS": str(BUDGET),
        # Row and table locks are waited for well past the budget.
        "INVENTORY_LOCK_TIMEOUT_MS": "20000",
        "INVENTORY_REQUEST_TIMEOUT_SECONDS": "20",
    }
    with ServerProcess(env, log=tmp_path_factory.mktemp("budget") / "log") as proc:
        yield proc


async def test_a_query_past_its_budget_is_answered_timeout_and_the_server_recovers(
    budget_server, slow_database
):
    conn = await asyncpg.connect(slow_database)
    try:
        sku = new_sku()
        await conn.fetchrow(CREATE, sku, "Budget", 5)
        lock = conn.transaction()
        await lock.start()
        await conn.execute("LOCK TABLE product IN ACCESS EXCLUSIVE MODE")  # reads wait
        started = time.monotonic()
        status, body, headers = await post(budget_server.url, PAGE, n=1)
        elapsed = time.monotonic() - started
        await lock.rollback()
    finally:
        await conn.close()
    assert status == 503 and headers.get("Retry-After") == "1"
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "TIMEOUT" and error["extensions"]["retriable"]
    assert error["extensions"]["requestId"]
    assert elapsed < BUDGET + 3, "answered within the budget (plus slack)"
    # The cancelled read gave its connection back: the next query is answered.
    status, body, _ = await post(budget_server.url, PAGE, n=1)
    assert status == 200 and "errors" not in body and body["data"]["products"]


async def test_a_reserve_waiting_past_the_query_budget_is_still_answered_with_its_hold(
    budget_server, slow_database
):
    conn = await asyncpg.connect(slow_database)
    try:
        sku = new_sku()
        await conn.fetchrow(CREATE, sku, "Budget", 5)
        lock = conn.transaction()
        await lock.start()
        await conn.execute("SELECT 1 FROM product WHERE sku = $1 FOR UPDATE", sku)
        reserve = asyncio.create_task(
            post(budget_server.url, RESERVE, lines=[{"sku": sku, "quantity": 2}])
        )
        await asyncio.sleep(3 * BUDGET)  # the reserve waits on the row lock meanwhile
        assert not reserve.done()
        await lock.rollback()
        status, body, _ = await reserve
        assert status == 200, body
        assert body["data"]["reserve"]["__typename"] == "Reservation"
        assert (await stock(conn, sku))["reserved"] == 2  # told held, and held
    finally:
        await conn.close()

"""Per-client cost budgets through a real server: a client looping on expensive
operations is refused RATE_LIMITED (HTTP 429, Retry-After) and changes nothing, while
other clients and admin callers go on; it is served again once its budget refills.

Each test is a client of its own: the server trusts 127.0.0.1 as a proxy (uvicorn's
FORWARDED_ALLOW_IPS default), so an X-Forwarded-For address is the client it counts.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from inventory_graphql.api.query_cost import costliest_allowed_query
from inventory_graphql.testing.graphql_ws import AVAILABILITY, GraphQLWebSocket, SubscriptionError
from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RESERVE
from tests.support.database import ledger, stock
from tests.support.graphql_http import ADMIN, SERVER_ENV

RATE, BURST = 1_000, 10_500  # the costliest query (~5,000) twice, then every 5 s
_addresses = itertools.count(1)


@pytest.fixture(scope="module")
def budgeted(database_url: str) -> Iterator[ServerProcess]:
    env = {
        **SERVER_ENV,
        "DATABASE_URL": database_url,
        "INVENTORY_CLIENT_COST_PER_SECOND": str(RATE),
        "INVENTORY_CLIENT_COST_BURST": str(BURST),
    }
    with ServerProcess(env) as server:
        yield server


def client() -> dict[str, str]:
    return {"X-Forwarded-For": f"10.14.{next(_addresses)}.1"}


async def post(
    server: ServerProcess, document: str, headers: dict[str, str], **variables: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{server.url}/graphql",
            json={"query": document, "variables": variables},
            headers=headers,
        ) as r,
    ):
        return r.status, await r.json(), dict(r.headers)


def code(body: dict[str, Any]) -> str | None:
    errors = body.get("errors")
    return str(errors[0]["extensions"]["code"]) if errors else None


async def test_a_client_looping_on_the_costliest_query_is_rate_limited(budgeted, make_product):
    await make_product(1)
    attacker, query = client(), costliest_allowed_query()
    served = 0
    while True:  # the burst's worth is served, then the first refusal
        sent = time.monotonic()
        status, body, headers = await post(budgeted, query, attacker)
        if code(body) is not None:
            break
        served += 1
        assert served < 4, "never refused"
    assert served == 2  # 10,500 units, about 5,000 each
    assert status == 429 and body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert error["extensions"]["retriable"] is True
    wait = error["extensions"]["retryAfterSeconds"]
    assert 4 < wait <= 5_000 / RATE
    assert int(headers["Retry-After"]) >= wait
    assert f"refills {RATE:g} a second up to {BURST}" in error["message"]
    # The refusal came when a retry would be let in, at most a second later: a client
    # looping as fast as it is answered is paced by its budget.
    assert time.monotonic() - sent >= 1

    # Another client, and an admin caller from the same address, are served meanwhile.
    status, body, _ = await post(budgeted, query, client())
    assert status == 200 and code(body) is None
    status, body, _ = await post(budgeted, query, {**attacker, **ADMIN})
    assert status == 200 and code(body) is None

    # Looping on: held at the door for a second (before anything is read), then refused
    # there, 429 with when to come back.
    started = time.monotonic()
    status, body, headers = await post(budgeted, query, attacker)
    assert time.monotonic() - started >= 1
    assert status == 429 and code(body) == "RATE_LIMITED"
    retry = body["errors"][0]["extensions"]["retryAfterSeconds"]
    assert 0 < retry < wait and int(headers["Retry-After"]) >= retry
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    # Coming back when told, it is served.
    await asyncio.sleep(retry)
    status, body, _ = await post(budgeted, query, attacker)
    assert status == 200 and code(body) is None
    assert time.monotonic() - sent >= wait


async def test_a_refused_reserve_holds_nothing(budgeted, db, make_product):
    """Carts spend the budget by their lines too (a hundred-line cart is ~700 units);
    what the client is told is what the database holds: a unit per Reservation on each
    product, nothing per refusal."""
    skus = [await make_product(1000) for _ in range(100)]
    cart = [{"sku": sku, "quantity": 1} for sku in skus]
    shopper = client()
    answers = await asyncio.gather(
        *(post(budgeted, RESERVE, shopper, lines=cart) for _ in range(100))
    )
    kinds = [
        body["data"]["reserve"]["__typename"] if body.get("data") else code(body)
        for _, body, _ in answers
    ]
    assert set(kinds) == {"Reservation", "RATE_LIMITED"}, kinds
    held = kinds.count("Reservation")
    assert 10 <= held <= 30  # the burst's worth (10,500 / ~700), and what refilled meanwhile
    refused = [
        status
        for (status, _, _), kind in zip(answers, kinds, strict=True)
        if kind == "RATE_LIMITED"
    ]
    assert set(refused) == {429}
    for sku in skus:
        assert (await stock(db, sku))["reserved"] == held
        assert [kind for kind, *_ in await ledger(db, sku)].count("RESERVE") == held


async def test_over_websocket_a_refusal_comes_when_a_retry_would_be_let_in(budgeted, make_product):
    """Subscribe/complete in a loop is paced by the budget, not by how fast it is refused."""
    skus = [await make_product(5) for _ in range(100)]  # ~850 units a subscription
    async with aiohttp.ClientSession() as session:
        ws = await GraphQLWebSocket.connect(session, budgeted.url, headers=client())
        answers = []
        for _ in range(16):
            started = time.monotonic()
            sub = await ws.subscribe(AVAILABILITY, skus=skus)
            try:
                await sub.next()
                answers.append(("ok", time.monotonic() - started, 0.0))
            except SubscriptionError as refused:
                (error,) = refused.errors
                extensions = error["extensions"]
                retry = extensions["retryAfterSeconds"]
                answers.append((extensions["code"], time.monotonic() - started, retry))
                break
            await sub.complete()
        await ws.close()
    kinds = [kind for kind, _, _ in answers]
    assert kinds[:-1] == ["ok"] * (len(kinds) - 1) and kinds[-1] == "RATE_LIMITED", kinds
    _, elapsed, retry = answers[-1]
    assert retry > 0 and elapsed >= min(retry, 1.0)

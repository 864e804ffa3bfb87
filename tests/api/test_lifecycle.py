"""Each path a hold can take, through the real HTTP stack, checked against the database."""

from __future__ import annotations

import asyncio
from datetime import datetime

from tests.api.queries import (
    ADJUST_STOCK,
    CONFIRM,
    CREATE_PRODUCT,
    PRODUCT,
    PRODUCTS,
    RELEASE,
    RESERVATION,
    RESERVE,
)
from tests.support.database import check, ledger, new_sku, stock


async def reserve(gql, sku: str, quantity: int, **extra) -> dict:
    data = await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": quantity}], **extra)
    return data["reserve"]


async def test_create_product_then_query_it(gql, db):
    sku = new_sku()
    created = (await gql.execute(CREATE_PRODUCT, sku=sku, name="Console", quantity=7))[
        "createProduct"
    ]
    assert created["__typename"] == "Product"
    assert (created["quantity"], created["reserved"], created["available"]) == (7, 0, 7)
    product = (await gql.execute(PRODUCT, sku=sku))["product"]
    assert product["name"] == "Console" and product["available"] == 7
    assert await ledger(db, sku) == [("CREATE", 7, 0)]
    again = (await gql.execute(CREATE_PRODUCT, sku=sku, name="Other", quantity=1))["createProduct"]
    assert again["__typename"] == "ProductExists" and again["sku"] == sku
    assert await stock(db, sku) == {"quantity": 7, "reserved": 0, "available": 7, "version": 1}


async def test_unknown_product_is_null(gql):
    assert (await gql.execute(PRODUCT, sku="NOPE-never-made"))["product"] is None


async def test_products_by_sku_and_all(gql, make_product):
    skus = sorted([await make_product(3), await make_product(4)])
    found = (await gql.execute(PRODUCTS, skus=[*skus, "NOPE-missing"]))["products"]
    assert [p["sku"] for p in found] == skus
    assert len((await gql.execute(PRODUCTS, first=1))["products"]) == 1
    assert (await gql.execute(PRODUCTS, skus=[]))["products"] == []


async def test_reserve_then_confirm(gql, db, make_product):
    sku = await make_product(10)
    held = await reserve(gql, sku, 3)
    assert held["__typename"] == "Reservation" and held["status"] == "PENDING"
    assert await stock(db, sku) == {"quantity": 10, "reserved": 3, "available": 7, "version": 2}

    confirmed = (await gql.execute(CONFIRM, id=held["id"]))["confirm"]
    assert confirmed["status"] == "CONFIRMED" and confirmed["resolvedAt"]
    assert confirmed["lines"][0]["product"]["available"] == 7
    assert await stock(db, sku) == {"quantity": 7, "reserved": 0, "available": 7, "version": 3}
    assert await ledger(db, sku) == [("CREATE", 10, 0), ("RESERVE", 0, 3), ("CONFIRM", -3, -3)]

    # A retried confirm is safe: same answer, nothing moves.
    again = (await gql.execute(CONFIRM, id=held["id"]))["confirm"]
    assert again["status"] == "CONFIRMED" and again["resolvedAt"] == confirmed["resolvedAt"]
    assert (await stock(db, sku))["quantity"] == 7
    assert len(await ledger(db, sku)) == 3
    # ...but a confirmed hold cannot be released.
    released = (await gql.execute(RELEASE, id=held["id"]))["release"]
    assert released["__typename"] == "ReservationNotPending"
    assert released["status"] == "CONFIRMED" and released["id"] == held["id"]
    assert (await check(db)).ok


async def test_reserve_then_release(gql, db, make_product):
    sku = await make_product(5)
    held = await reserve(gql, sku, 5)
    assert (await stock(db, sku))["available"] == 0

    released = (await gql.execute(RELEASE, id=held["id"]))["release"]
    assert released["status"] == "RELEASED"
    assert await stock(db, sku) == {"quantity": 5, "reserved": 0, "available": 5, "version": 3}
    assert await ledger(db, sku) == [("CREATE", 5, 0), ("RESERVE", 0, 5), ("RELEASE", 0, -5)]

    assert (await gql.execute(RELEASE, id=held["id"]))["release"]["status"] == "RELEASED"
    refused = (await gql.execute(CONFIRM, id=held["id"]))["confirm"]
    assert refused["__typename"] == "ReservationNotPending" and refused["status"] == "RELEASED"
    assert len(await ledger(db, sku)) == 3
    assert (await check(db)).ok


async def test_reserve_then_expire(gql, db, make_product):
    sku = await make_product(4)
    held = await reserve(gql, sku, 4, ttl=1)
    assert (await stock(db, sku))["available"] == 0
    expires_at = datetime.fromisoformat(held["expiresAt"])

    for _ in range(50):
        found = (await gql.execute(RESERVATION, id=held["id"]))["reservation"]
        if found["status"] != "PENDING":
            break
        await asyncio.sleep(0.1)
    assert found["status"] == "EXPIRED"
    # The sweeper returns stock within 2 seconds of expiry.
    assert (datetime.fromisoformat(found["resolvedAt"]) - expires_at).total_seconds() < 2
    assert await stock(db, sku) == {"quantity": 4, "reserved": 0, "available": 4, "version": 3}
    assert await ledger(db, sku) == [("CREATE", 4, 0), ("RESERVE", 0, 4), ("EXPIRE", 0, -4)]

    refused = (await gql.execute(CONFIRM, id=held["id"]))["confirm"]
    assert refused["__typename"] == "ReservationNotPending" and refused["status"] == "EXPIRED"
    assert (await gql.execute(RELEASE, id=held["id"]))["release"]["status"] == "EXPIRED"
    assert (await check(db)).ok


async def test_multi_line_cart_is_all_or_nothing(gql, db, make_product):
    plenty, scarce = await make_product(10), await make_product(1)
    lines = [{"sku": plenty, "quantity": 2}, {"sku": scarce, "quantity": 2}]
    refused = (await gql.execute(RESERVE, lines=lines))["reserve"]
    assert refused["__typename"] == "InsufficientStock"
    assert (refused["sku"], refused["requested"], refused["available"]) == (scarce, 2, 1)
    assert (await stock(db, plenty))["reserved"] == 0
    assert len(await ledger(db, plenty)) == 1

    lines[1]["quantity"] = 1
    held = (await gql.execute(RESERVE, lines=lines))["reserve"]
    assert held["__typename"] == "Reservation"
    assert sorted((line["sku"], line["quantity"]) for line in held["lines"]) == sorted(
        [(plenty, 2), (scarce, 1)]
    )
    assert (await stock(db, plenty))["reserved"] == 2 and (await stock(db, scarce))[
        "available"
    ] == 0


async def test_reservation_query_shows_lines_with_products(gql, make_product):
    sku = await make_product(3)
    held = await reserve(gql, sku, 2)
    found = (await gql.execute(RESERVATION, id=held["id"]))["reservation"]
    assert found["status"] == "PENDING"
    assert found["lines"] == [{"sku": sku, "quantity": 2, "product": {"sku": sku}}]


async def test_unknown_or_malformed_reservation_is_null(gql):
    assert (await gql.execute(RESERVATION, id="not-a-uuid"))["reservation"] is None
    zero = "00000000-0000-0000-0000-000000000000"
    assert (await gql.execute(RESERVATION, id=zero))["reservation"] is None
    for mutation, field in ((CONFIRM, "confirm"), (RELEASE, "release")):
        for rid in ("not-a-uuid", zero):
            outcome = (await gql.execute(mutation, id=rid))[field]
            assert outcome["__typename"] == "ReservationNotFound" and outcome["id"] == rid


async def test_adjust_stock_restock_and_write_off(gql, db, make_product):
    sku = await make_product(5)
    await reserve(gql, sku, 3)
    up = (await gql.execute(ADJUST_STOCK, sku=sku, delta=10, reason="restock"))["adjustStock"]
    assert (up["quantity"], up["reserved"], up["available"]) == (15, 3, 12)
    down = (await gql.execute(ADJUST_STOCK, sku=sku, delta=-12, reason="damaged"))["adjustStock"]
    assert (down["quantity"], down["available"]) == (3, 0)
    # Cannot go below what is held.
    refused = (await gql.execute(ADJUST_STOCK, sku=sku, delta=-1, reason="lost"))["adjustStock"]
    assert refused["__typename"] == "InvalidInput" and refused["field"] == "delta"
    assert await stock(db, sku) == {"quantity": 3, "reserved": 3, "available": 0, "version": 4}
    assert await ledger(db, sku) == [
        ("CREATE", 5, 0),
        ("RESERVE", 0, 3),
        ("ADJUST", 10, 0),
        ("ADJUST", -12, 0),
    ]
    missing = (await gql.execute(ADJUST_STOCK, sku="NOPE-x", delta=1, reason="r"))["adjustStock"]
    assert missing["__typename"] == "ProductNotFound" and missing["sku"] == "NOPE-x"
    assert (await check(db)).ok


async def test_get_serves_queries(gql, make_product):
    sku = await make_product(2)
    params = {
        "query": "query($s: String!) { product(sku: $s) { available } }",
        "variables": f'{{"s": "{sku}"}}',
    }
    async with gql.http.get("/graphql", params=params) as response:
        assert await response.json() == {"data": {"product": {"available": 2}}}


async def test_graphiql_served_to_browsers(gql):
    async with gql.http.get("/graphql", headers={"accept": "text/html"}) as response:
        assert response.status == 200 and "graphiql" in (await response.text()).lower()

"""Many shoppers at once, through the real HTTP stack."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from tests.api.queries import RESERVE
from tests.support.database import check, stock


async def test_2000_shoppers_100_units_exactly_100_win(gql, db, make_product):
    sku = await make_product(100)
    lines = [{"sku": sku, "quantity": 1}]

    results = await asyncio.gather(*(gql.execute(RESERVE, lines=lines) for _ in range(2000)))

    outcomes = Counter(r["reserve"]["__typename"] for r in results)
    assert outcomes == {"Reservation": 100, "InsufficientStock": 1900}
    ids = {r["reserve"]["id"] for r in results if r["reserve"]["__typename"] == "Reservation"}
    assert len(ids) == 100
    after = await stock(db, sku)
    assert (after["quantity"], after["reserved"], after["available"]) == (100, 100, 0)
    # One version per change to the row: per reservation, or per batch when coalesced.
    assert 1 < after["version"] <= 101
    held = await db.fetchval(
        "SELECT sum(l.quantity) FROM reservation_line l JOIN product p ON p.id = l.product_id "
        "WHERE p.sku = $1",
        sku,
    )
    assert held == 100
    assert (await check(db)).ok


async def test_overlapping_carts_in_opposite_orders_never_deadlock(gql, db, make_product):
    a, b, c = await make_product(60), await make_product(60), await make_product(60)
    carts = [
        [(a, 1), (b, 1)],
        [(b, 1), (a, 1)],
        [(c, 1), (b, 1), (a, 1)],
        [(a, 1), (c, 1)],
        [(c, 1), (a, 1), (b, 1)],
    ]
    random.seed(7)
    chosen = [random.choice(carts) for _ in range(400)]

    results = await asyncio.gather(
        *(
            gql.execute(RESERVE, lines=[{"sku": s, "quantity": q} for s, q in cart])
            for cart in chosen
        )
    )

    granted: Counter[str] = Counter()
    for cart, result in zip(chosen, results, strict=True):
        kind = result["reserve"]["__typename"]
        assert kind in ("Reservation", "InsufficientStock"), result
        if kind == "Reservation":
            granted.update(s for s, _ in cart)
    for sku in (a, b, c):
        row = await stock(db, sku)
        # Each cart is all-or-nothing: the units held are exactly the granted carts' lines.
        assert row["reserved"] == granted[sku] <= 60
    # The stock ran out: some carts were refused and at least one product is sold out.
    assert min([(await stock(db, s))["available"] for s in (a, b, c)]) == 0
    assert (await check(db)).ok

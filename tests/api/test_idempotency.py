"""Idempotency keys: a retried reserve never holds twice."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from tests.api.queries import CONFIRM, RESERVE
from tests.support.database import check, ledger, stock


async def test_50_concurrent_calls_with_one_key_create_one_hold(gql, db, make_product):
    sku = await make_product(100)
    key = f"order-{uuid.uuid4()}"
    lines = [{"sku": sku, "quantity": 2}]

    results = await asyncio.gather(*(gql.execute(RESERVE, lines=lines, key=key) for _ in range(50)))

    assert Counter(r["reserve"]["__typename"] for r in results) == {"Reservation": 50}
    assert len({r["reserve"]["id"] for r in results}) == 1
    assert (await stock(db, sku))["reserved"] == 2
    assert await ledger(db, sku) == [("CREATE", 100, 0), ("RESERVE", 0, 2)]
    assert (
        await db.fetchval("SELECT count(*) FROM reservation WHERE idempotency_key = $1", key) == 1
    )
    assert (await check(db)).ok


async def test_replay_returns_the_reservation_as_it_is_now(gql, db, make_product):
    a, b = await make_product(10), await make_product(10)
    key = f"order-{uuid.uuid4()}"
    lines = [{"sku": a, "quantity": 1}, {"sku": b, "quantity": 2}]
    first = (await gql.execute(RESERVE, lines=lines, key=key))["reserve"]
    await gql.execute(CONFIRM, id=first["id"])

    # Same lines in another order: the same reservation, now confirmed; nothing new held.
    replay = (await gql.execute(RESERVE, lines=lines[::-1], key=key))["reserve"]
    assert replay["id"] == first["id"] and replay["status"] == "CONFIRMED"
    assert await stock(db, a) == {"quantity": 9, "reserved": 0, "available": 9, "version": 3}


async def test_same_key_with_other_lines_is_refused(gql, db, make_product):
    sku = await make_product(10)
    key = f"order-{uuid.uuid4()}"
    await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 1}], key=key)
    before = (await stock(db, sku), await ledger(db, sku))

    reused = (await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 2}], key=key))["reserve"]

    assert reused["__typename"] == "IdempotencyKeyReused" and reused["idempotencyKey"] == key
    assert reused["message"]
    assert (await stock(db, sku), await ledger(db, sku)) == before


async def test_a_failed_reserve_does_not_bind_its_key(gql, db, make_product):
    sku = await make_product(1)
    key = f"order-{uuid.uuid4()}"
    short = (await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 2}], key=key))["reserve"]
    assert short["__typename"] == "InsufficientStock"
    held = (await gql.execute(RESERVE, lines=[{"sku": sku, "quantity": 1}], key=key))["reserve"]
    assert held["__typename"] == "Reservation"

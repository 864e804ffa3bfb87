"""Coalesced reservations: one transaction per batch, each request its own answer."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from inventory_graphql.inventory.coalescer import ReservationCoalescer
from inventory_graphql.inventory.models import (
    InsufficientStock,
    LineRequest,
    ProductNotFound,
    Reservation,
)
from tests.conftest import check, ledger, stock


def coalescer_of(service, **options) -> ReservationCoalescer:
    return ReservationCoalescer(
        service.pool,
        service.reservations,
        service.give_back,
        service.contention,
        **{"max_batch": 256, "max_queued": 10_000, **options},
    )


@pytest.fixture
async def coalescer(service):
    running = coalescer_of(service)
    async with service.give_back.running(), running.running():
        yield running


async def test_requests_queued_together_share_one_transaction(coalescer, db, make_product):
    sku = await make_product(3)
    # Queued in one tick, so they form one batch: FIFO, each refused one answered alone.
    outcomes = await asyncio.gather(
        coalescer.reserve([LineRequest(sku, 2)], 600),
        coalescer.reserve([LineRequest(sku, 2)], 600),  # does not fit after the first
        coalescer.reserve([LineRequest(sku, 1)], 600),  # fits: FIFO does not block it
        coalescer.reserve([LineRequest("NOPE-none", 1)], 600),
        coalescer.reserve([LineRequest(sku, 1)], 600),  # sold out by now
    )
    assert coalescer.batches == 1 and coalescer.batched_requests == 5
    assert isinstance(outcomes[0], Reservation) and isinstance(outcomes[2], Reservation)
    # Each refusal tells the numbers of the pass that refused it: after the first grant.
    assert outcomes[1] == InsufficientStock(sku, 2, 1)
    assert outcomes[3] == ProductNotFound("NOPE-none")
    assert outcomes[4] == InsufficientStock(sku, 1, 0)
    assert await stock(db, sku) == {"quantity": 3, "reserved": 3, "available": 0, "version": 3}
    assert await ledger(db, sku) == [("CREATE", 3, 0), ("RESERVE", 0, 2), ("RESERVE", 0, 1)]
    assert (await check(db)).ok


async def test_an_idle_service_answers_a_lone_request_in_a_batch_of_one(coalescer, make_product):
    sku = await make_product(1)
    assert isinstance(await coalescer.reserve([LineRequest(sku, 1)], 600), Reservation)
    assert (coalescer.batches, coalescer.batched_requests) == (1, 1)


async def test_carts_in_a_batch_are_all_or_nothing_in_fifo_order(coalescer, db, make_product):
    a, b = await make_product(3), await make_product(1)
    outcomes = await asyncio.gather(
        coalescer.reserve([LineRequest(a, 1)], 600),
        coalescer.reserve([LineRequest(b, 1), LineRequest(a, 1)], 600),  # takes the last b
        coalescer.reserve([LineRequest(a, 1), LineRequest(b, 1)], 600),  # b is gone: nothing held
        coalescer.reserve([LineRequest(a, 1)], 600),  # the last a
    )
    assert coalescer.batches == 1
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds == ["Reservation", "Reservation", "InsufficientStock", "Reservation"]
    # The refusal names the line that did not fit, as it stood under that row's lock.
    assert outcomes[2] == InsufficientStock(b, 1, 0)
    assert (await stock(db, a))["reserved"] == 3 and (await stock(db, b))["reserved"] == 1
    assert (await check(db)).ok


@pytest.mark.parametrize("path", ["_fetch_alone", "_grant"])
async def test_a_failing_batch_does_not_fail_its_requests(
    coalescer, db, make_product, monkeypatch, path
):
    sku, other = await make_product(2), await make_product(5)
    failures = []
    working = getattr(coalescer, path)

    async def broken(*args):
        if failures:
            return await working(*args)
        failures.append(path)
        raise RuntimeError("simulated failure inside the batch")

    monkeypatch.setattr(coalescer, path, broken)
    requests = [[LineRequest(sku, 1)] for _ in range(3)]
    if path == "_grant":  # a batch with a cart takes the transaction path
        requests.append([LineRequest(other, 1), LineRequest(sku, 1)])
    outcomes = await asyncio.gather(*(coalescer.reserve(lines, 600) for lines in requests))

    assert failures == [path], "the batch failed once, then each request was retried alone"
    assert Counter(type(o).__name__ for o in outcomes) == {
        "Reservation": 2,
        "InsufficientStock": len(requests) - 2,
    }
    # Answered alone, concurrently: any two of them get the two units of `sku`.
    granted = [
        lines for lines, o in zip(requests, outcomes, strict=True) if isinstance(o, Reservation)
    ]
    assert (await stock(db, sku))["reserved"] == 2
    assert (await stock(db, other))["reserved"] == sum(len(lines) == 2 for lines in granted)
    assert (await check(db)).ok


async def test_mixed_singles_and_carts_on_hot_products_never_oversell(
    coalescer, service, db, make_product
):
    # Two coalescers, as two server processes would run: batches of single lines (one
    # self-committing statement each) and batches with carts (a transaction) interleave
    # on the same rows.
    second = coalescer_of(service)
    async with second.running():
        await _mixed_singles_and_carts(coalescer, second, service, db, make_product)


async def _mixed_singles_and_carts(coalescer, second, service, db, make_product):
    hot = [await make_product(150) for _ in range(3)]
    random.seed(11)
    shapes = []
    for _ in range(900):
        k = random.choice([1, 1, 1, 2, 3])
        shapes.append([LineRequest(s, random.randint(1, 2)) for s in random.sample(hot, k)])

    async def shopper(lines, via):
        await asyncio.sleep(random.random() / 50)  # arrive spread out, in many batches
        return await via.reserve(lines, 600)

    outcomes = await asyncio.gather(
        *(shopper(lines, (coalescer, second)[i % 2]) for i, lines in enumerate(shapes))
    )

    held: Counter[str] = Counter()
    for lines, outcome in zip(shapes, outcomes, strict=True):
        assert isinstance(outcome, Reservation | InsufficientStock), outcome
        if isinstance(outcome, Reservation):
            assert sorted((x.sku, x.quantity) for x in outcome.lines) == sorted(
                (x.sku, x.quantity) for x in lines
            )
            held.update({line.sku: line.quantity for line in lines})
    for sku in hot:
        row = await stock(db, sku)
        assert row["reserved"] == held[sku] <= 150
    assert min([(await stock(db, sku))["available"] for sku in hot]) <= 1, "stock ran out"
    assert coalescer.batches + second.batches < len(shapes), "requests were coalesced"
    # Release half, confirm the rest: stock comes back and leaves exactly.
    for i, outcome in enumerate(o for o in outcomes if isinstance(o, Reservation)):
        resolve = service.reservations.release if i % 2 else service.reservations.confirm
        assert isinstance(await resolve(outcome.id), Reservation)
    assert [(await stock(db, sku))["reserved"] for sku in hot] == [0, 0, 0]
    assert (await check(db)).ok

"""Hold control in the service: extend with a cap, partial release, partial confirm.

Every number is computed by hand and checked against the stock, the ledger, the hold's
lines and `check`.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from inventory_graphql.config import Settings
from inventory_graphql.inventory.models import (
    HoldLimitReached,
    InvalidInput,
    LineRequest,
    Reservation,
    ReservationNotPending,
    ReservationStatus,
)
from inventory_graphql.inventory.service import InventoryService
from tests.support.database import check, ledger, stock

CONFIRMED, RELEASED, EXPIRED = (
    ReservationStatus.CONFIRMED,
    ReservationStatus.RELEASED,
    ReservationStatus.EXPIRED,
)


def lines_of(hold: Reservation) -> dict[str, tuple[int, int, int]]:
    """sku -> (reserved, confirmed, released)."""
    return {line.sku: (line.quantity, line.confirmed, line.released) for line in hold.lines}


async def past_expiry(db, hold_id: str) -> None:
    """Move a hold past its expiry, as time would (nobody has expired it yet)."""
    await db.execute(
        "UPDATE reservation SET created_at = now() - interval '1 hour', "
        "expires_at = now() - interval '1 second' WHERE id = $1::uuid",
        hold_id,
    )


async def test_three_line_hold_partial_release_extend_partial_confirm(service, db, make_product):
    a, b, c = [await make_product(10) for _ in range(3)]
    held = await service.reserve(
        [LineRequest(a, 3), LineRequest(b, 4), LineRequest(c, 5)], ttl_seconds=60
    )
    assert isinstance(held, Reservation)

    # Two of b's four units go back; the hold stays PENDING with the rest.
    after_release = await service.release(held.id, [LineRequest(b, 2)])
    assert isinstance(after_release, Reservation)
    assert after_release.status is ReservationStatus.PENDING
    assert lines_of(after_release) == {a: (3, 0, 0), b: (4, 0, 2), c: (5, 0, 0)}
    assert await stock(db, b) == {"quantity": 10, "reserved": 2, "available": 8, "version": 3}

    # An extension moves the expiry only: no stock changes.
    extended = await service.extend(held.id, 120)
    assert isinstance(extended, Reservation)
    assert extended.expires_at - held.expires_at > timedelta(seconds=50)
    assert extended.lines == after_release.lines
    assert (await stock(db, a))["version"] == 2

    # Two of a and one of b are bought; every other held unit returns in the same step.
    confirmed = await service.confirm(held.id, [LineRequest(a, 2), LineRequest(b, 1)])
    assert isinstance(confirmed, Reservation)
    assert confirmed.status is CONFIRMED and confirmed.resolved_at is not None
    assert lines_of(confirmed) == {a: (3, 2, 1), b: (4, 1, 3), c: (5, 0, 5)}
    assert confirmed == await service.reservation(held.id)

    assert (await stock(db, a))["quantity"] == 8 and (await stock(db, a))["reserved"] == 0
    assert (await stock(db, b))["quantity"] == 9 and (await stock(db, b))["reserved"] == 0
    assert (await stock(db, c))["quantity"] == 10 and (await stock(db, c))["reserved"] == 0
    assert await ledger(db, a) == [
        ("CREATE", 10, 0),
        ("RESERVE", 0, 3),
        ("CONFIRM", -2, -2),
        ("RELEASE", 0, -1),
    ]
    assert await ledger(db, b) == [
        ("CREATE", 10, 0),
        ("RESERVE", 0, 4),
        ("RELEASE", 0, -2),
        ("CONFIRM", -1, -1),
        ("RELEASE", 0, -1),
    ]
    assert await ledger(db, c) == [("CREATE", 10, 0), ("RESERVE", 0, 5), ("RELEASE", 0, -5)]
    assert (await check(db)).ok

    # The same partial confirm again answers the hold as it is; another one does not.
    assert await service.confirm(held.id, [LineRequest(a, 2), LineRequest(b, 1)]) == confirmed
    assert await service.confirm(held.id, [LineRequest(a, 1)]) == ReservationNotPending(
        held.id, CONFIRMED
    )
    assert await service.release(held.id, [LineRequest(c, 1)]) == ReservationNotPending(
        held.id, CONFIRMED
    )
    assert len(await ledger(db, a)) == 4


async def test_releasing_every_held_unit_ends_the_hold(service, db, make_product):
    a, b = await make_product(5), await make_product(5)
    held = await service.reserve([LineRequest(a, 2), LineRequest(b, 1)])
    assert isinstance(held, Reservation)
    first = await service.release(held.id, [LineRequest(a, 1)])
    assert isinstance(first, Reservation) and first.status is ReservationStatus.PENDING
    last = await service.release(held.id, [LineRequest(a, 1), LineRequest(b, 1)])
    assert isinstance(last, Reservation)
    assert last.status is RELEASED and lines_of(last) == {a: (2, 0, 2), b: (1, 0, 1)}
    # A retry of the release that ended it answers the hold, changing nothing.
    assert await service.release(held.id, [LineRequest(a, 1), LineRequest(b, 1)]) == last
    assert await ledger(db, a) == [
        ("CREATE", 5, 0),
        ("RESERVE", 0, 2),
        ("RELEASE", 0, -1),
        ("RELEASE", 0, -1),
    ]
    assert await stock(db, a) == {"quantity": 5, "reserved": 0, "available": 5, "version": 4}
    assert await service.extend(held.id, 60) == ReservationNotPending(held.id, RELEASED)
    assert (await check(db)).ok


async def test_parts_the_hold_does_not_hold_change_nothing(service, db, make_product):
    a, b, other = await make_product(5), await make_product(5), await make_product(5)
    held = await service.reserve([LineRequest(a, 2), LineRequest(b, 2)])
    assert isinstance(held, Reservation)
    await service.release(held.id, [LineRequest(b, 1)])
    before = await ledger(db, a), await ledger(db, b), await stock(db, a), await stock(db, b)

    too_many = await service.confirm(held.id, [LineRequest(a, 1), LineRequest(b, 2)])
    assert isinstance(too_many, InvalidInput) and too_many.field == "lines[1].quantity"
    not_in_hold = await service.release(held.id, [LineRequest(other, 1)])
    assert isinstance(not_in_hold, InvalidInput) and not_in_hold.field == "lines[0].sku"
    for bad in ([], [LineRequest(a, 0)], [LineRequest(a, 1), LineRequest(a, 1)]):
        assert isinstance(await service.release(held.id, bad), InvalidInput)
        assert isinstance(await service.confirm(held.id, bad), InvalidInput)

    assert (await ledger(db, a), await ledger(db, b), await stock(db, a), await stock(db, b)) == (
        before
    )
    found = await service.reservation(held.id)
    assert found is not None and found.status is ReservationStatus.PENDING
    assert lines_of(found) == {a: (2, 0, 0), b: (2, 0, 1)}
    assert (await check(db)).ok


@pytest.mark.parametrize("ttl", [0, 3601])
async def test_extension_ttl_is_bounded(service, make_product, ttl):
    held = await service.reserve([LineRequest(await make_product(1), 1)])
    assert isinstance(held, Reservation)
    invalid = await service.extend(held.id, ttl)
    assert isinstance(invalid, InvalidInput) and invalid.field == "ttlSeconds"


async def test_extension_past_the_cap_answers_the_latest_allowed_expiry(pool, db, make_product):
    capped = InventoryService(pool, Settings(coalesce_reservations=False, max_hold_seconds=100))
    held = await capped.reserve([LineRequest(await make_product(1), 1)], ttl_seconds=60)
    assert isinstance(held, Reservation)
    # Shorter than what is left: the expiry never moves back.
    same = await capped.extend(held.id, 30)
    assert isinstance(same, Reservation) and same.expires_at == held.expires_at
    longer = await capped.extend(held.id, 90)
    assert isinstance(longer, Reservation) and longer.expires_at > held.expires_at
    refused = await capped.extend(held.id, 200)
    assert refused == HoldLimitReached(held.id, held.created_at + timedelta(seconds=100))
    assert await capped.reservation(held.id) == longer
    # Nothing sweeps this shared database: a hold left to fall due here would make every
    # later test's `check` report it overdue.
    assert isinstance(await capped.release(held.id), Reservation)


async def test_a_hold_found_past_its_expiry_is_expired_by_whoever_finds_it(
    service, db, make_product
):
    sku = await make_product(4)
    for call in ("extend", "confirm", "release"):
        held = await service.reserve([LineRequest(sku, 2)])
        assert isinstance(held, Reservation)
        await service.release(held.id, [LineRequest(sku, 1)])
        await past_expiry(db, held.id)
        if call == "extend":
            answer = await service.extend(held.id, 60)
        elif call == "confirm":
            answer = await service.confirm(held.id, [LineRequest(sku, 1)])
        else:
            answer = await service.release(held.id, [LineRequest(sku, 1)])
        found = await service.reservation(held.id)
        assert found is not None and found.status is EXPIRED
        assert lines_of(found) == {sku: (2, 0, 2)}
        # A release of an expired hold answers it, as a full release does.
        assert answer == (found if call == "release" else ReservationNotPending(held.id, EXPIRED))
        assert (await ledger(db, sku))[-2:] == [("RELEASE", 0, -1), ("EXPIRE", 0, -1)]
    assert (await stock(db, sku))["reserved"] == 0
    assert (await check(db)).ok


async def test_check_finds_a_line_changed_behind_the_ledger(service, db, make_product):
    sku = await make_product(3)
    held = await service.reserve([LineRequest(sku, 2)])
    assert isinstance(held, Reservation)
    await db.execute(
        "UPDATE reservation_line SET released = 1 WHERE reservation_id = $1::uuid", held.id
    )
    report = await check(db)
    assert not report.ok and any(held.id in problem for problem in report.problems)
    await db.execute(
        "UPDATE reservation_line SET released = 0 WHERE reservation_id = $1::uuid", held.id
    )
    assert (await check(db)).ok


async def test_no_hold_outlives_the_cap_however_long_its_ttl(pool, make_product):
    """A reserve asking for more than INVENTORY_MAX_HOLD_SECONDS is held until the cap."""
    service = InventoryService(pool, Settings(coalesce_reservations=False, max_hold_seconds=120))
    sku = await make_product(5)
    hold = await service.reserve([LineRequest(sku, 1)], 3600)
    assert isinstance(hold, Reservation)
    assert hold.expires_at - hold.created_at == timedelta(seconds=120)
    assert isinstance(await service.release(hold.id), Reservation)  # no debris (see above)

"""The hub passes on a notification only when the database's own order explains it."""

from __future__ import annotations

from datetime import UTC, datetime

from inventory_graphql.inventory.models import Product, StockLevel
from inventory_graphql.live.hub import AvailabilityHub

NOW = datetime(2026, 12, 1, tzinfo=UTC)


class Database:
    """What `read_products` would read: the rows as committed."""

    def __init__(self) -> None:
        self.rows: dict[str, Product] = {}
        self.reads: list[list[str]] = []

    def commit(self, sku: str, quantity: int, reserved: int, version: int) -> StockLevel:
        self.rows[sku] = Product(sku, sku, quantity, reserved, version, NOW)
        return self.rows[sku].stock_level

    async def read_products(self, skus, first):
        self.reads.append(list(skus))
        return [self.rows[sku] for sku in skus if sku in self.rows][:first]


def level(sku: str, quantity: int, reserved: int, version: int) -> StockLevel:
    return StockLevel(sku, quantity, reserved, version, NOW)


async def test_a_notification_that_follows_the_last_version_is_passed_on_unread():
    db = Database()
    hub = AvailabilityHub(broadcast=None, read_products=db.read_products)  # type: ignore[arg-type]
    with hub.watch(["A"]) as mailbox:
        await hub.publish_notified([db.commit("A", 10, 1, 5)])  # first seen: read once
        assert db.reads == [["A"]]
        await hub.publish_notified([db.commit("A", 10, 2, 6)])
        await hub.publish_notified([db.commit("A", 10, 3, 7)])
        assert db.reads == [["A"]], "notifications in order cost no read"
        assert await mailbox.take() == [level("A", 10, 3, 7)]
        assert hub.checked == 1


async def test_a_forged_version_jump_never_reaches_subscribers():
    db = Database()
    hub = AvailabilityHub(broadcast=None, read_products=db.read_products)  # type: ignore[arg-type]
    with hub.watch(["A"]) as mailbox:
        await hub.publish_notified([db.commit("A", 10, 0, 5)])
        assert await mailbox.take() == [level("A", 10, 0, 5)]
        # Anyone who can NOTIFY: a huge version with made-up numbers.
        await hub.publish_notified([level("A", 999, 0, 2**40)])
        assert mailbox.pending == 0  # the database still says version 5: nothing new
        # Real changes keep arriving: nothing was shadowed by the forged version.
        await hub.publish_notified([db.commit("A", 10, 4, 6)])
        assert await mailbox.take() == [level("A", 10, 4, 6)]


async def test_a_forged_first_notification_is_replaced_by_the_row():
    db = Database()
    db.commit("A", 10, 0, 5)
    hub = AvailabilityHub(broadcast=None, read_products=db.read_products)  # type: ignore[arg-type]
    with hub.watch(["A"]) as mailbox:
        await hub.publish_notified([level("A", 0, 0, 2**40)])
        assert await mailbox.take() == [level("A", 10, 0, 5)]


async def test_unwatched_skus_cost_nothing_and_rewatching_starts_over():
    db = Database()
    hub = AvailabilityHub(broadcast=None, read_products=db.read_products)  # type: ignore[arg-type]
    await hub.publish_notified([db.commit("B", 1, 0, 2)])
    assert db.reads == []
    with hub.watch(["B"]):
        await hub.publish_notified([db.commit("B", 1, 1, 3)])
    with hub.watch(["B"]) as mailbox:
        await hub.publish_notified([db.commit("B", 1, 0, 4)])  # known was forgotten: read
        assert db.reads == [["B"], ["B"]]
        assert await mailbox.take() == [level("B", 1, 0, 4)]

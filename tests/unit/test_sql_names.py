"""Names and numbers that SQL and Python share are spelled the same on both sides."""

from __future__ import annotations

import re

from inventory_graphql.database import migrations
from inventory_graphql.inventory import catalog, validation
from inventory_graphql.live import channel


def _migration(name: str) -> str:
    return next(m.sql for m in migrations() if m.name == name)


def test_the_trigger_notifies_the_channel_the_listener_listens_on():
    sql = _migration("availability_notify")
    assert f"pg_notify('{channel.CHANNEL}'" in sql
    assert re.search(rf"CREATE TRIGGER {channel.TRIGGER}\b", sql)
    assert re.findall(r"pg_notify\('([a-z_]+)'", sql) == [channel.CHANNEL]


def test_the_stock_ceiling_is_one_number_in_validation_the_table_and_adjust():
    ceiling = str(validation.MAX_STOCK)
    assert f"quantity <= {ceiling}" in _migration("core")
    assert f"BETWEEN reserved AND {ceiling}" in catalog.ADJUST


def test_migrations_are_numbered_without_gaps():
    assert [m.version for m in migrations()] == list(range(1, len(migrations()) + 1))

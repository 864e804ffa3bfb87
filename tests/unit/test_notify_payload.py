"""parse_payload: the availability trigger's NOTIFY payload becomes stock levels; anything
else raises the errors the hub skips (a hand-made NOTIFY must not stop fan-out)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from inventory_graphql.inventory.models import StockLevel
from inventory_graphql.live.hub import parse_payload


def test_a_trigger_payload_becomes_stock_levels() -> None:
    # As json_build_array(sku, quantity, reserved, version, updated_at) writes it.
    payload = (
        '[["SKU-1", 10, 3, 7, "2026-03-01T12:30:45.123456+00:00"], '
        '["SKU-2", 0, 0, 1, "2026-03-01T14:00:00+02:00"]]'
    )
    first, second = parse_payload(payload)
    assert first == StockLevel(
        "SKU-1", 10, 3, 7, datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)
    )
    assert first.available == 7
    assert second.sku == "SKU-2" and second.version == 1
    assert second.updated_at.utcoffset() == timedelta(hours=2)
    assert second.updated_at == datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_levels_keep_the_payloads_order() -> None:
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))
    rows = [[f"S{i:03d}", i, i // 2, i + 1, stamp.isoformat()] for i in range(40)]
    levels = parse_payload(json.dumps(rows))
    assert [(x.sku, x.quantity, x.reserved, x.version, x.updated_at) for x in levels] == [
        (sku, q, r, v, stamp) for sku, q, r, v, _ in rows
    ]


def test_an_empty_array_is_no_levels() -> None:
    assert parse_payload("[]") == []


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not json",
        '[["A", 1, 0, 1, "2026-01-01T00:00:00+00:00"]',  # cut short
        '[["A", 1, 0, 1]]',  # a field missing
        '[["A", 1, 0, 1, "2026-01-01T00:00:00+00:00", "extra"]]',
        '[["A", 1, 0, 1, "yesterday"]]',
        '[["A", 1, 0, 1, null]]',
        '[["A", 1, 0, 1, 1767225600]]',
        "[null]",
        "[42]",
        "42",
        "null",
        '{"sku": "A"}',
        '"RESYNC"',
        '[["A", "5", 0, 1, "2026-01-01T00:00:00+00:00"]]',  # a number as text
        '[["A", 5, 0.5, 1, "2026-01-01T00:00:00+00:00"]]',
        '[["A", 5, 0, true, "2026-01-01T00:00:00+00:00"]]',
        '[[7, 5, 0, 1, "2026-01-01T00:00:00+00:00"]]',  # a sku that is not text
    ],
)
def test_a_malformed_payload_raises_what_the_hub_skips(payload: str) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_payload(payload)

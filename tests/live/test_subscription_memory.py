"""A subscription lives as long as a product page stays open: it must not grow with time."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime

from starlette.websockets import WebSocket

from inventory_graphql.api.client_limits import ClientLimits
from inventory_graphql.api.context import Context
from inventory_graphql.api.schema import build_schema
from inventory_graphql.inventory.models import StockLevel
from inventory_graphql.live.hub import AvailabilityHub
from inventory_graphql.testing.graphql_ws import AVAILABILITY


async def test_a_subscription_keeps_no_memory_per_delivered_update(service, make_product):
    sku = await make_product(10)
    # The real schema and hub, in this process so its memory can be traced; the test
    # publishes changes itself instead of running the hub's listener.
    hub = AvailabilityHub(broadcast=None, read_products=service.products)  # type: ignore[arg-type]
    limits = ClientLimits(connections=0, subscriptions=0, rate=0, burst=1)  # the app's
    scope = {"type": "websocket", "headers": [], "state": {"client_limits": limits}}
    socket = WebSocket(scope, receive=None, send=None)  # type: ignore[arg-type]
    context = Context(request=socket, response=None, service=service, hub=hub)
    stream = await build_schema().subscribe(
        AVAILABILITY, variable_values={"skus": [sku]}, context_value=context
    )
    first = await anext(stream)
    assert first.data is not None
    version = first.data["availability"]["version"]

    async def deliver(updates: int) -> None:
        nonlocal version
        for _ in range(updates):
            version += 1
            hub.publish([StockLevel(sku, 10, 1, version, datetime.now(UTC))])
            result = await anext(stream)
            assert result.errors is None
            assert result.data is not None
            assert result.data["availability"]["version"] == version

    await deliver(100)  # caches and free lists settle
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await deliver(2000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        await stream.aclose()
    # graphql-core 3.3 kept ~1 KiB per event for the life of a subscription (2 MB here).
    assert grown < 100_000, f"{grown:,} bytes kept after 2,000 updates"

"""`serve --demo`: a small catalog for first-time users, and buyer tokens for the page.

The storefront page needs buyer tokens ("You are buyer 7"), which a real shop's backend
mints for its signed-in customers. In demo mode the service stands in for that backend at
`GET /demo/buyer-token?buyer=N`: anyone who reaches it can be any buyer, which is the
point of a demo and why the route exists only there.
"""

from __future__ import annotations

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from inventory_graphql.api.buyers import BuyerTokens
from inventory_graphql.config import Settings
from inventory_graphql.database import migrate
from inventory_graphql.inventory.service import InventoryService

# (sku, name, quantity, purchase limit per buyer or None)
CATALOG: list[tuple[str, str, int, int | None]] = [
    ("CONSOLE-X", "Game console, restock edition", 100, None),
    ("TICKET-FLOOR", "Concert ticket, floor", 250, None),
    ("TICKET-BALCONY", "Concert ticket, balcony", 500, None),
    ("SNEAKER-42", "Limited sneaker, size 42", 12, None),
    ("VINYL-LTD", "Limited vinyl pressing", 300, None),
    ("LAST-ONE", "The very last one", 1, None),
    # A drop with a limit: each buyer may hold plus buy 2.
    ("DROP-JACKET", "Drop jacket, 2 per buyer", 40, 2),
    # Sells out in a few clicks: the waiting list's product.
    ("ENCORE-PASS", "Encore pass, 3 made", 3, None),
]

# A demo token lasts an hour; the page asks for a new one before it runs out.
DEMO_TOKEN_SECONDS = 3600
# Buyers the route names: 1 to this, as plain digits (the page's switcher takes the same).
MAX_DEMO_BUYER = 100_000


async def load_demo_catalog(database_url: str) -> None:
    """Create the demo products, but only into an empty catalog."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        service = InventoryService(pool, Settings())  # its background work is not needed
        if await service.products(first=1):
            return
        for sku, name, quantity, limit in CATALOG:
            await service.create_product(sku, name, quantity)
            if limit is not None:
                await service.set_purchase_limit(sku, limit)
    finally:
        await pool.close()


def demo_buyer(raw: str) -> str | None:
    """The buyer id `?buyer=` names, or None when it is not 1 to MAX_DEMO_BUYER."""
    # isdecimal() alone would take other scripts' digits; the length bound comes first.
    if not (0 < len(raw) <= len(str(MAX_DEMO_BUYER)) and raw.isascii() and raw.isdecimal()):
        return None
    buyer = int(raw)
    return str(buyer) if 1 <= buyer <= MAX_DEMO_BUYER else None


def buyer_token_route(secret: str) -> Route:
    """`GET /demo/buyer-token?buyer=N`: `{"buyer", "token", "expiresInSeconds"}` for buyer N."""
    tokens = BuyerTokens(secret)

    async def buyer_token(request: Request) -> Response:
        buyer = demo_buyer(request.query_params.get("buyer", ""))
        if buyer is None:
            return PlainTextResponse(
                f"buyer must be a number from 1 to {MAX_DEMO_BUYER}", status_code=400
            )
        token = tokens.mint(buyer, DEMO_TOKEN_SECONDS)
        return JSONResponse(
            {"buyer": buyer, "token": token, "expiresInSeconds": DEMO_TOKEN_SECONDS},
            headers={"cache-control": "no-store"},  # a credential: never cached
        )

    return Route("/demo/buyer-token", buyer_token, methods=["GET"])

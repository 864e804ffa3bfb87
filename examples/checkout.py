"""A checkout against inventory-graphql with the Python `gql` client (4.x).

Reserve with an idempotency key, retry the reserve once with the same key when the answer
is lost or transient (a transport error, an HTTP 5xx, a `retriable` error such as BUSY),
then confirm. Replaying the key answers the hold the first attempt made, if it made one,
so the retry never holds twice. Prints one JSON object per line: each failed attempt, the
reservation, the confirmed reservation, and the product's numbers at the end.

    pip install 'gql[aiohttp]>=4,<5'
    python examples/checkout.py --url http://localhost:8000 --sku CONSOLE-X --quantity 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from typing import Any

from gql import Client, GraphQLRequest
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.exceptions import (
    TransportConnectionFailed,
    TransportError,
    TransportQueryError,
    TransportServerError,
)

RESERVE = """
mutation Reserve($lines: [ReserveLineInput!]!, $ttl: Int, $key: String) {
  reserve(lines: $lines, ttlSeconds: $ttl, idempotencyKey: $key) {
    __typename
    ... on Reservation { id status expiresAt lines { sku quantity } }
    ... on InsufficientStock { sku requested available }
    ... on Problem { message }
  }
}
"""

CONFIRM = """
mutation Confirm($id: ID!) {
  confirm(id: $id) {
    __typename
    ... on Reservation { id status resolvedAt lines { sku quantity confirmedQuantity } }
    ... on ReservationNotPending { id status }
    ... on Problem { message }
  }
}
"""

PRODUCT = """
query Product($sku: String!) { product(sku: $sku) { sku quantity reserved available } }
"""

DEFAULT_RETRY_DELAY = 0.5  # seconds, when a 503 carries no Retry-After


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def retriable(error: TransportError) -> bool:
    """Whether the request may be sent again as it is: nothing is known to have happened
    (the connection failed, the server or a proxy answered 5xx), or the service said so."""
    if isinstance(error, TransportConnectionFailed):
        return True
    if isinstance(error, TransportServerError):
        return error.code is None or error.code >= 500
    if isinstance(error, TransportQueryError):
        return any((e.get("extensions") or {}).get("retriable") for e in error.errors or [])
    return False


def retry_delay(transport: AIOHTTPTransport) -> float:
    headers = transport.response_headers
    try:
        return min(float(headers["Retry-After"]), 5.0) if headers else DEFAULT_RETRY_DELAY
    except (KeyError, ValueError):
        return DEFAULT_RETRY_DELAY


async def checkout(url: str, sku: str, quantity: int, key: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    transport = AIOHTTPTransport(url=f"{url.rstrip('/')}/graphql", headers=headers)
    async with Client(transport=transport) as session:
        reserve = GraphQLRequest(
            RESERVE,
            variable_values={"lines": [{"sku": sku, "quantity": quantity}], "ttl": 300, "key": key},
        )
        for attempt in (1, 2):
            try:
                held = (await session.execute(reserve))["reserve"]
                break
            except TransportError as error:
                emit("reserve_failed", attempt=attempt, error=str(error), key=key)
                if attempt == 2 or not retriable(error):
                    return 2
                await asyncio.sleep(retry_delay(transport))
        emit("reserved", attempt=attempt, key=key, reservation=held)
        if held["__typename"] != "Reservation":
            return 1
        # Payment would happen here; it succeeded.
        confirmed = (
            await session.execute(GraphQLRequest(CONFIRM, variable_values={"id": held["id"]}))
        )["confirm"]
        emit("confirmed", reservation=confirmed)
        product = await session.execute(GraphQLRequest(PRODUCT, variable_values={"sku": sku}))
        emit("product", product=product["product"])
        return 0 if confirmed["__typename"] == "Reservation" else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:8000", help="the service's base URL")
    parser.add_argument("--sku", required=True)
    parser.add_argument("--quantity", type=int, default=1)
    parser.add_argument(
        "--key", default=None, help="idempotency key (default: a new one for this checkout)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("INVENTORY_TOKEN"),
        help="storefront or buyer token, if the service needs one (env INVENTORY_TOKEN)",
    )
    args = parser.parse_args()
    key = args.key or f"checkout-{uuid.uuid4()}"
    sys.exit(asyncio.run(checkout(args.url, args.sku, args.quantity, key, args.token)))


if __name__ == "__main__":
    main()

"""GraphQL over HTTP against a server process: the admin token, the environment test
servers run with, and a client that sends the token."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Added to DATABASE_URL for every test server: fast sweeps, a known admin token, and no
# per-client limits (the whole suite is one client, 127.0.0.1, opening up to 100 sockets
# and racing thousands of requests at once; tests/live/test_client_limits.py and
# tests/security/test_cost_budget.py run servers with the limits on).
SERVER_ENV = {
    "INVENTORY_SWEEP_INTERVAL_SECONDS": "0.2",
    "INVENTORY_ADMIN_TOKEN": ADMIN_TOKEN,
    "INVENTORY_MAX_WS_CONNECTIONS_PER_CLIENT": "0",
    "INVENTORY_MAX_SUBSCRIPTIONS_PER_CLIENT": "0",
    "INVENTORY_SUBSCRIBE_RATE_PER_CLIENT": "0",
    "INVENTORY_CLIENT_COST_PER_SECOND": "0",
}


class GraphQLClient:
    """Sends the admin token, so tests can create and restock products."""

    # aiohttp rather than httpx: httpx's client costs ~1-2 ms of CPU per request and
    # slows down further with hundreds of connections, which starved the race tests.
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def execute(self, query: str, **variables: Any) -> dict[str, Any]:
        """POST one document with variables; fail on any top-level error."""
        body = await self.raw(query, **variables)
        assert "errors" not in body, body
        return body["data"]

    async def raw(self, query: str, **variables: Any) -> dict[str, Any]:
        body = {"query": query, "variables": variables}
        async with self.http.post("/graphql", json=body, headers=ADMIN) as response:
            assert response.status == 200, await response.text()
            return await response.json()


@contextlib.asynccontextmanager
async def graphql_client(url: str) -> AsyncIterator[GraphQLClient]:
    """A client of the server at `url` with room for the race tests' hundreds of sockets
    (the `gql` fixtures: the suite's and the demo package's, which runs in its own loop)."""
    async with aiohttp.ClientSession(
        url,
        connector=aiohttp.TCPConnector(limit=256),
        timeout=aiohttp.ClientTimeout(total=60),
    ) as http:
        yield GraphQLClient(http)

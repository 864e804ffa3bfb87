"""What an operator reads: metrics, JSON logs with request ids, production mode."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from inventory_graphql.testing.server import ServerProcess
from tests.api.queries import RESERVE
from tests.support.graphql_http import SERVER_ENV


async def test_metrics_count_operations_outcomes_batches_and_pool(server, make_product):
    sku = await make_product(1)
    async with aiohttp.ClientSession() as session:
        body = {"query": RESERVE, "variables": {"lines": [{"sku": sku, "quantity": 1}]}}
        for _ in range(2):  # one Reservation, then one InsufficientStock
            async with session.post(f"{server.url}/graphql", json=body) as response:
                await response.read()
        async with session.get(f"{server.url}/metrics") as response:
            text = await response.text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert (
        samples['inventory_graphql_operation_seconds_count{field="reserve",type="mutation"}'] >= 2
    )
    assert samples['inventory_reservations_total{outcome="Reservation"}'] >= 1
    assert samples['inventory_reservations_total{outcome="InsufficientStock"}'] >= 1
    assert samples["inventory_reservation_batch_size_count"] >= 2
    assert samples["inventory_db_pool_max"] == 8
    assert samples["inventory_listener_connected"] == 1


async def test_json_logs_and_production_mode(database_url, tmp_path):
    env = {
        "DATABASE_URL": database_url,
        **SERVER_ENV,
        "INVENTORY_LOG_FORMAT": "json",
        "INVENTORY_ENV": "production",
        # Production runs trusted documents only; this test sends its own as a stranger.
        "INVENTORY_TRUSTED_DOCUMENTS_ONLY": "off",
        "INVENTORY_METRICS_TOKEN": "scrape-me",
    }
    log = tmp_path / "log"
    server = ServerProcess(env, ["--log-level", "info"], log=log)
    try:
        await asyncio.to_thread(server.wait_ready)
        async with aiohttp.ClientSession() as session:
            introspect = {"query": "{ __schema { types { name } } }"}
            headers = {"x-request-id": "ops-test-request-1"}
            async with session.post(
                f"{server.url}/graphql", json=introspect, headers=headers
            ) as response:
                body = await response.json()
            assert body.get("data") is None and "introspection" in body["errors"][0]["message"]
            async with session.get(
                f"{server.url}/graphql", headers={"accept": "text/html"}
            ) as response:
                assert "graphiql" not in (await response.text()).lower()
            # Production names no field the client did not: no "Did you mean" hints.
            typo = {"query": 'mutation { adjustStok(sku: "A", delta: 1, reason: "r") { sku } }'}
            async with session.post(f"{server.url}/graphql", json=typo) as response:
                message = (await response.json())["errors"][0]["message"]
            assert message == "Cannot query field 'adjustStok' on type 'Mutation'.", message
            # With a metrics token, only its holder may scrape.
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "scrape-me"}):
                async with session.get(f"{server.url}/metrics", headers=headers) as response:
                    assert response.status == 401
                    assert response.headers["www-authenticate"] == "Bearer"
                    assert "inventory_" not in await response.text()
            scraper = {"authorization": "Bearer scrape-me"}
            async with session.get(f"{server.url}/metrics", headers=scraper) as response:
                assert response.status == 200
                assert "inventory_db_pool_max 8.0" in await response.text()
            # A GET query string carries variables (reservation ids among them).
            secret = "5f0c0d2e-0000-4000-8000-00000000beef"
            params = {
                "query": "query($id: ID!) { reservation(id: $id) { status } }",
                "variables": json.dumps({"id": secret}),
            }
            async with session.get(f"{server.url}/graphql", params=params) as response:
                assert (await response.json())["data"] == {"reservation": None}
    finally:
        assert server.stop() == 0
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert records, "every log line is a JSON object"
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any(r["request_id"] == "ops-test-request-1" for r in access)
    assert any('"GET /graphql HTTP/1.1" 200' in r["message"] for r in access), access
    assert secret not in log.read_text() and "variables" not in log.read_text()

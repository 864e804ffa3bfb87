"""Trusted documents through a real server with trusted-only on: registered documents run
by id over HTTP (POST and GET) and WebSocket, anything else a storefront caller sends is
refused with nothing run, admin callers send what they like; and a manifest that cannot
be used stops `serve` before it starts."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from inventory_graphql.api.trusted_documents import Manifest, document_id
from inventory_graphql.api.trusted_manifest import service_checks
from inventory_graphql.testing.server import ServerProcess
from tests.support.database import ledger, stock
from tests.support.graphql_http import ADMIN, ADMIN_TOKEN, SERVER_ENV
from tests.support.paths import ROOT

MANIFEST = ROOT / "trusted-documents.json"
TRUSTED = {document.name: document for document in Manifest.load(MANIFEST, service_checks())}
# Not registered: the demo's own document with one more space is another document.
UNTRUSTED_RESERVE = TRUSTED["Reserve"].body + " "


@pytest.fixture(scope="module")
def trusted_only(database_url, tmp_path_factory):
    env = {"DATABASE_URL": database_url, **SERVER_ENV, "INVENTORY_TRUSTED_DOCUMENTS_ONLY": "on"}
    with ServerProcess(env, log=tmp_path_factory.mktemp("trusted") / "log") as server:
        yield server


@pytest.fixture
async def http(trusted_only):
    async with aiohttp.ClientSession(trusted_only.url) as session:
        yield session


async def post(http, body: dict[str, Any], headers=None) -> tuple[int, Any]:
    async with http.post("/graphql", json=body, headers=headers or {}) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def get(http, **params: str) -> tuple[int, Any]:
    async with http.get("/graphql", params=params) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def numbers(db, sku: str) -> dict[str, int]:
    row = await stock(db, sku)
    return {key: row[key] for key in ("quantity", "reserved", "available")}


def refused(body: Any, code: str) -> str:
    assert body["data"] is None, body
    [error] = body["errors"]
    assert error["extensions"]["code"] == code, error
    assert error["extensions"]["requestId"]
    message: str = error["message"]
    return message


async def test_a_registered_document_runs_by_id_over_post_and_get(http, make_product):
    sku = await make_product(5)
    products = TRUSTED["Products"]
    variables = {"skus": [sku]}
    expected = {"sku": sku, "available": 5, "quantity": 5, "reserved": 0}

    answers = [
        await post(http, {"documentId": products.id, "variables": variables}),
        await get(http, documentId=products.id, variables=json.dumps(variables)),
        await post(http, {"query": products.body, "variables": variables}),  # its exact text
        await post(
            http, {"query": products.body, "documentId": products.id, "variables": variables}
        ),
    ]
    for status, body in answers:
        assert status == 200, body
        [product] = body["data"]["products"]
        assert {key: product[key] for key in expected} == expected


async def test_mutations_run_by_id_and_never_over_get(http, make_product, db):
    sku = await make_product(3)
    lines = [{"sku": sku, "quantity": 2}]
    reserve = TRUSTED["Reserve"]
    status, text = await get(http, documentId=reserve.id, variables=json.dumps({"lines": lines}))
    assert status == 405 and "cannot be sent with GET" in text["errors"][0]["message"]
    assert (await numbers(db, sku))["reserved"] == 0

    status, body = await post(http, {"documentId": reserve.id, "variables": {"lines": lines}})
    held = body["data"]["reserve"]
    assert status == 200 and held["__typename"] == "Reservation", body
    confirm = TRUSTED["Confirm"]
    status, body = await post(http, {"documentId": confirm.id, "variables": {"id": held["id"]}})
    assert body["data"]["confirm"]["status"] == "CONFIRMED", body
    assert await numbers(db, sku) == {"quantity": 1, "reserved": 0, "available": 1}


async def test_an_arbitrary_storefront_document_is_refused_and_nothing_runs(http, make_product, db):
    sku = await make_product(4)
    before = (await stock(db, sku), await ledger(db, sku))
    lines = [{"sku": sku, "quantity": 1}]
    answers = [
        await post(http, {"query": UNTRUSTED_RESERVE, "variables": {"lines": lines}}),
        await post(http, {"query": "{ products(first: 1000) { sku name } }"}),
        await get(http, query="{ __typename }"),
        # Not even parsed: this is no GraphQL at all.
        await post(http, {"query": "not GraphQL {{{"}),
    ]
    for status, body in answers:
        assert status == 200, body
        message = refused(body, "TRUSTED_DOCUMENT_REQUIRED")
        assert "trusted documents only" in message and "documentId" in message
    assert (await stock(db, sku), await ledger(db, sku)) == before


async def test_unknown_and_contradictory_ids_are_refused(http):
    products = TRUSTED["Products"]
    unknown = document_id(products.body + " ")
    status, body = await post(http, {"documentId": unknown})
    assert status == 200
    assert unknown in refused(body, "PERSISTED_QUERY_NOT_FOUND")
    status, body = await get(http, documentId="sha256:nope")
    assert status == 200 and refused(body, "PERSISTED_QUERY_NOT_FOUND")

    contradiction = {"query": TRUSTED["Reserve"].body, "documentId": products.id}
    status, body = await post(http, contradiction)
    assert status == 400
    assert "disagree" in refused(body, "BAD_REQUEST")
    status, body = await post(http, {"documentId": 42})
    assert status == 400 and "`documentId` must be a string" in refused(body, "BAD_REQUEST")


async def test_admin_callers_may_send_any_document(http, make_product, db):
    sku = await make_product(2)
    lines = [{"sku": sku, "quantity": 1}]
    status, body = await post(
        http, {"query": UNTRUSTED_RESERVE, "variables": {"lines": lines}}, ADMIN
    )
    assert status == 200 and body["data"]["reserve"]["__typename"] == "Reservation", body
    query = f'mutation {{ adjustStock(sku: "{sku}", delta: 3, reason: "r") {{ __typename }} }}'
    status, body = await post(http, {"query": query}, ADMIN)
    assert body["data"] == {"adjustStock": {"__typename": "Product"}}, body
    assert await numbers(db, sku) == {"quantity": 5, "reserved": 1, "available": 4}


class Socket:
    """graphql-transport-ws, raw: subscribe payloads exactly as given."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = 0

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, init: dict[str, Any]) -> Socket:
        ws = await http.ws_connect("/graphql", protocols=["graphql-transport-ws"])
        await ws.send_json({"type": "connection_init", "payload": init})
        assert (await ws.receive_json(timeout=10))["type"] == "connection_ack"
        return cls(ws)

    async def subscribe(self, payload: dict[str, Any]) -> str:
        self.ids += 1
        await self.ws.send_json({"id": str(self.ids), "type": "subscribe", "payload": payload})
        return str(self.ids)

    async def receive(self, operation_id: str) -> dict[str, Any]:
        while True:
            message = await self.ws.receive_json(timeout=10)
            if message.get("id") == operation_id:
                return message


async def test_subscriptions_by_id_get_their_snapshot_and_others_are_refused(
    http, make_product, trusted_only
):
    sku = await make_product(7)
    availability = TRUSTED["Availability"]
    variables = {"skus": [sku]}
    socket = await Socket.connect(http, {})
    try:
        live = await socket.subscribe({"documentId": availability.id, "variables": variables})
        snapshot = await socket.receive(live)
        assert snapshot["type"] == "next", snapshot
        assert snapshot["payload"]["data"]["availability"]["available"] == 7

        untrusted = availability.body.replace("updatedAt", "")
        refusals: list[tuple[dict[str, Any], str]] = [
            ({"query": untrusted, "variables": variables}, "TRUSTED_DOCUMENT_REQUIRED"),
            ({"documentId": document_id(untrusted)}, "PERSISTED_QUERY_NOT_FOUND"),
            ({"documentId": availability.id, "query": untrusted}, "BAD_REQUEST"),
        ]
        for payload, code in refusals:
            message = await socket.receive(await socket.subscribe(payload))
            assert message["type"] == "error", message
            assert message["payload"][0]["extensions"]["code"] == code, message

        # The connection and its subscription carry on: a change still arrives.
        reserve = {"lines": [{"sku": sku, "quantity": 2}]}
        status, _ = await post(http, {"documentId": TRUSTED["Reserve"].id, "variables": reserve})
        assert status == 200
        update = await socket.receive(live)
        assert update["payload"]["data"]["availability"]["available"] == 5
    finally:
        await socket.ws.close()

    # The admin token in connection_init (browsers cannot set headers) allows any document.
    admin = await Socket.connect(http, {"authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        own = "subscription Mine($skus: [String!]!) { availability(skus: $skus) { available } }"
        message = await admin.receive(await admin.subscribe({"query": own, "variables": variables}))
        assert message["payload"]["data"]["availability"] == {"available": 5}, message
    finally:
        await admin.ws.close()


def serve(tmp_path, manifest: str | None, **env: str) -> subprocess.CompletedProcess[str]:
    if manifest is not None:
        (tmp_path / "manifest.json").write_text(manifest)
        env["INVENTORY_TRUSTED_DOCUMENTS_FILE"] = str(tmp_path / "manifest.json")
    return subprocess.run(
        [sys.executable, "-m", "inventory_graphql", "serve"],
        env={**env, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )


def edited(change) -> str:
    data = json.loads(MANIFEST.read_text())
    change(data["operations"][0])
    return json.dumps(data)


@pytest.mark.parametrize(
    ("manifest", "env", "says"),
    [
        (
            edited(lambda op: op.update(body=op["body"].replace("__typename", "__typename "))),
            {},
            "its id is not the SHA-256 of its body",
        ),
        (
            edited(
                lambda op: op.update(
                    body=op["body"].replace("reason", "why"),
                    id=document_id(op["body"].replace("reason", "why")),
                )
            ),
            {},
            "Unknown argument 'why'",
        ),
        ("{", {}, "not JSON"),
        (None, {"INVENTORY_TRUSTED_DOCUMENTS_FILE": "/nowhere.json"}, "no manifest at"),
        (
            None,
            {"INVENTORY_ENV": "production", "INVENTORY_TRUSTED_DOCUMENTS_FILE": "/nowhere.json"},
            "trusted-only mode needs one",
        ),
    ],
    ids=["stale", "invalid", "not JSON", "missing", "missing in production"],
)
def test_a_manifest_that_cannot_be_used_stops_serve(tmp_path, manifest, env, says):
    started = serve(tmp_path, manifest, **env)
    assert started.returncode == 2, started.stderr
    assert says in started.stderr, started.stderr
    assert "Traceback" not in started.stderr

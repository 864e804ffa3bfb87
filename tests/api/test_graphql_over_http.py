"""GraphQL over HTTP: the media type a client accepts decides the answer's type, and with
application/graphql-response+json its status says whether the request ran (the spec's
watershed, 2025-01-01). Against a real server, through the lean path and the view; and
the spec's own audit suite (npm graphql-http), every MUST and SHOULD."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from inventory_graphql.api.media_types import GRAPHQL_RESPONSE, JSON, preferred
from inventory_graphql.testing.server import ServerProcess
from tests.support.node import npm_installed

AUDIT = Path(__file__).resolve().parent / "http_audit"
RESPONSE_TYPE = "application/graphql-response+json; charset=utf-8"
JSON_TYPE = "application/json; charset=utf-8"


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, JSON),
        (b"", JSON),
        (b"*/*", JSON),
        (b"application/json", JSON),
        (b"application/graphql-response+json", GRAPHQL_RESPONSE),
        (b"application/graphql-response+json, application/json;q=0.9", GRAPHQL_RESPONSE),
        (b"application/json, application/graphql-response+json", JSON),  # first wins a tie
        (b"application/json;q=0.5, application/graphql-response+json", GRAPHQL_RESPONSE),
        (b"Application/GraphQL-Response+JSON", GRAPHQL_RESPONSE),
        (b"text/html, */*;q=0.1", JSON),
        (b"application/graphql-response+json;q=0", None),
        (b"text/xml", None),
        (b"text/html", None),
    ],
)
def test_the_media_type_follows_accept(accept: bytes | None, chosen: bytes | None) -> None:
    assert preferred(accept) == chosen


async def post(
    server: ServerProcess, body: dict[str, Any], accept: str | None
) -> tuple[int, str, dict[str, Any] | str]:
    headers = {"content-type": "application/json"}
    if accept is not None:
        headers["accept"] = accept
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/graphql", json=body, headers=headers) as response,
    ):
        text = await response.text()
        kind = response.headers.get("content-type", "")
        return response.status, kind, json.loads(text) if "json" in kind else text


REQUEST_ERRORS: dict[str, dict[str, Any]] = {
    "does not parse": {"query": "{ product(sku: "},
    "does not validate": {"query": "{ nope }"},
    "variables do not coerce": {
        "query": "query P($sku: String!) { product(sku: $sku) { sku } }",
        "variables": {"sku": 7},
    },
}


@pytest.mark.parametrize("case", REQUEST_ERRORS)
async def test_a_request_error_is_a_400_without_data_for_the_new_media_type(
    server: ServerProcess, case: str
) -> None:
    status, kind, answer = await post(server, REQUEST_ERRORS[case], GRAPHQL_RESPONSE.decode())
    assert (status, kind) == (400, RESPONSE_TYPE)
    assert isinstance(answer, dict) and "data" not in answer and answer["errors"]
    assert all("path" not in error for error in answer["errors"])


@pytest.mark.parametrize("case", REQUEST_ERRORS)
async def test_application_json_clients_keep_the_answer_they_had(
    server: ServerProcess, case: str
) -> None:
    for accept in (None, "application/json", "*/*"):
        status, kind, answer = await post(server, REQUEST_ERRORS[case], accept)
        assert (status, kind) == (200, JSON_TYPE)
        assert isinstance(answer, dict) and answer["data"] is None and answer["errors"]


async def test_field_errors_stay_200_with_data(
    server: ServerProcess, make_product: Any, db: asyncpg.Connection
) -> None:
    sku = await make_product(5)
    mutation = (
        'mutation A($sku: String!) { adjustStock(sku: $sku, delta: 3, reason: "restock")'
        " { __typename } }"
    )
    status, kind, answer = await post(
        server, {"query": mutation, "variables": {"sku": sku}}, GRAPHQL_RESPONSE.decode()
    )
    # Not the admin: the field is refused, the request ran.
    assert (status, kind) == (200, RESPONSE_TYPE)
    assert isinstance(answer, dict) and "data" in answer
    assert [error["path"] for error in answer["errors"]] == [["adjustStock"]]
    assert await db.fetchval("SELECT quantity FROM product WHERE sku = $1", sku) == 5


async def test_a_query_answers_in_the_media_type_asked_for_on_both_paths(
    server: ServerProcess, make_product: Any
) -> None:
    sku = await make_product(4)
    body = {
        "query": "query P($sku: String!) { product(sku: $sku) { sku available } }",
        "variables": {"sku": sku},
    }
    # The first answer of a document comes from the view, later ones from the lean path.
    for _ in range(3):
        status, kind, answer = await post(server, body, GRAPHQL_RESPONSE.decode())
        assert (status, kind) == (200, RESPONSE_TYPE)
        assert answer == {"data": {"product": {"sku": sku, "available": 4}}}
        status, kind, answer = await post(server, body, "application/json")
        assert (status, kind) == (200, JSON_TYPE)
        assert answer == {"data": {"product": {"sku": sku, "available": 4}}}


async def test_an_accept_allowing_neither_type_is_refused_406_and_nothing_runs(
    server: ServerProcess, make_product: Any, db: asyncpg.Connection
) -> None:
    sku = await make_product(5)
    reserve = {
        "query": "mutation R($sku: String!) { reserve(lines: [{sku: $sku, quantity: 1}])"
        " { __typename } }",
        "variables": {"sku": sku},
    }
    status, kind, answer = await post(server, reserve, "text/xml")
    assert (status, kind) == (406, JSON_TYPE)
    assert (
        isinstance(answer, dict) and answer["errors"][0]["extensions"]["code"] == "NOT_ACCEPTABLE"
    )
    assert await db.fetchval("SELECT reserved FROM product WHERE sku = $1", sku) == 0


async def test_a_browser_asking_for_html_still_gets_graphiql(server: ServerProcess) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/graphql", headers={"accept": "text/html"}) as response,
    ):
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/html")


@pytest.fixture(scope="module")
def audit_script() -> Path:
    """tests/api/http_audit with its pinned packages installed (npm ci)."""
    npm_installed(AUDIT, "the GraphQL over HTTP audit")
    return AUDIT / "audit.mjs"


def test_the_graphql_over_http_audit_passes_every_must_and_should(
    server: ServerProcess, audit_script: Path
) -> None:
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, str(audit_script), f"{server.url}/graphql"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    results = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(results) >= 50  # the suite ran (1.23 has 61 audits)
    assert [r for r in results if r["status"] != "ok"] == []


async def test_a_document_with_several_operations_needs_a_name_and_runs_none_without(
    server: ServerProcess, make_product: Any, db: asyncpg.Connection
) -> None:
    sku = await make_product(5)
    reserve = "reserve(lines: [{sku: $sku, quantity: 1}]) { __typename }"
    body = {
        "query": f"mutation A($sku: String!) {{ {reserve} }} "
        f"mutation B($sku: String!) {{ {reserve} }}",
        "variables": {"sku": sku},
    }
    status, kind, answer = await post(server, body, GRAPHQL_RESPONSE.decode())
    assert (status, kind) == (400, RESPONSE_TYPE)
    assert isinstance(answer, dict) and "data" not in answer
    assert answer["errors"][0]["message"] == (
        "Must provide operation name if query contains multiple operations."
    )
    status, kind, answer = await post(server, body, "application/json")
    assert (status, kind) == (200, JSON_TYPE)
    assert isinstance(answer, dict) and answer["data"] is None and answer["errors"]
    assert await db.fetchval("SELECT reserved FROM product WHERE sku = $1", sku) == 0
    # Named, it runs: once.
    status, _, answer = await post(server, {**body, "operationName": "B"}, None)
    assert status == 200 and answer == {"data": {"reserve": {"__typename": "Reservation"}}}
    assert await db.fetchval("SELECT reserved FROM product WHERE sku = $1", sku) == 1


async def test_an_unknown_operation_name_is_a_request_error_in_json(
    server: ServerProcess,
) -> None:
    body = {"query": "query A { __typename }", "operationName": "Z"}
    status, kind, answer = await post(server, body, GRAPHQL_RESPONSE.decode())
    assert (status, kind) == (400, RESPONSE_TYPE)
    assert isinstance(answer, dict) and "data" not in answer
    assert answer["errors"][0]["message"] == 'Unknown operation named "Z".'
    assert answer["errors"][0]["extensions"]["requestId"]
    status, kind, answer = await post(server, body, "application/json")
    assert (status, kind) == (200, JSON_TYPE)
    assert isinstance(answer, dict) and answer["errors"][0]["message"].startswith("Unknown")


@pytest.mark.parametrize("accept", ["application/json", GRAPHQL_RESPONSE.decode()])
async def test_a_mutation_over_get_is_405_allowing_post_and_does_not_run(
    server: ServerProcess, make_product: Any, db: asyncpg.Connection, accept: str
) -> None:
    sku = await make_product(5)
    query = f'mutation {{ reserve(lines: [{{sku: "{sku}", quantity: 1}}]) {{ __typename }} }}'
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{server.url}/graphql", params={"query": query}, headers={"accept": accept}
        ) as response,
    ):
        assert response.status == 405
        assert response.headers["allow"] == "POST"
        assert response.headers["content-type"].startswith(accept)
        answer = await response.json(content_type=None)
    assert "POST" in answer["errors"][0]["message"]
    assert await db.fetchval("SELECT reserved FROM product WHERE sku = $1", sku) == 0


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
async def test_other_methods_are_405_allowing_get_and_post(
    server: ServerProcess, method: str
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"{server.url}/graphql", json={"query": "{ __typename }"}
        ) as response,
    ):
        assert response.status == 405
        assert response.headers["allow"] == "GET, POST"
        answer = await response.json()
    assert answer["errors"][0]["extensions"]["code"] == "METHOD_NOT_ALLOWED"


async def test_an_operation_name_that_is_not_a_string_is_400(server: ServerProcess) -> None:
    for name in (7, True, ["A"], {"A": 1}):
        status, _, _ = await post(
            server, {"query": "query A { __typename }", "operationName": name}, None
        )
        assert status == 400

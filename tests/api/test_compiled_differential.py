"""The lean path (compiled plans) answers exactly as Strawberry's view and graphql-core do.

Every query and mutation the demo sends (the trusted-documents manifest) and every one
the tests send (their module-level documents) runs, with several sets of variables
(good, out of stock, unknown, malformed), as an anonymous shopper and as the admin,
against two servers on two databases seeded alike: one with INVENTORY_COMPILED_OPERATIONS
on, one with it off. Both see the same requests in the same order, so their databases
evolve alike, and every answer must match: the status, the JSON (data and errors, with
messages, locations and paths) and the headers a client reads. Only what differs by
nature is normalised: ids the databases chose (numbered in order of appearance, so the
structure still has to match), timestamps and request ids.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from graphql import GraphQLError, OperationDefinitionNode, OperationType, parse, print_ast

import tests
from inventory_graphql.inventory.catalog import CREATE
from inventory_graphql.testing.server import ServerProcess
from tests.support.database import create_database
from tests.support.graphql_http import ADMIN_TOKEN, SERVER_ENV

ROOT = Path(__file__).resolve().parents[2]
ADMIN = ADMIN_TOKEN
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?")
HEADERS = ("content-type", "retry-after", "www-authenticate")

# Shapes the service's own documents do not use, but a client's may; taken into the
# corpus with the rest (every upper-case string of the tests' modules).
SHAPES = """
query Shapes($sku: String!, $skus: [String!]) {
  __typename
  first: product(sku: $sku) { ...Stock name }
  again: product(sku: $sku) { sku available }
  products(skus: $skus) { ... on Product { sku } __typename ...Stock }
  skipped: product(sku: $sku) @skip(if: true) { sku }
  included: product(sku: $sku) @include(if: true) { sku @include(if: false) name }
  missing: product(sku: "NOPE-404") { sku }
}
fragment Stock on Product { sku quantity reserved available }
query Other { products(first: 1) { sku } }
"""
NESTED = """
mutation Nested($lines: [ReserveLineInput!]!, $id: ID!) {
  first: reserve(lines: $lines) { ...Held }
  again: reserve(lines: $lines, ttlSeconds: 900) { ...Held ... on InsufficientStock { sku } }
  release(id: $id) { __typename ... on Reservation { lines { product { sku available } } } }
}
fragment Held on Reservation { id lines { sku quantity product { available } } }
"""
FORBIDDEN = "query Webhooks { webhooks { id url } stockEvents(first: 2) { __typename } }"


def corpus() -> Iterator[tuple[str, str, str | None]]:
    """(where from, document text, operation name) for every query and mutation."""
    seen: set[tuple[str, str | None]] = set()
    manifest = json.loads((ROOT / "trusted-documents.json").read_text())
    sources = [("demo manifest", op["body"]) for op in manifest["operations"]]
    for module in pkgutil.walk_packages(tests.__path__, "tests."):
        try:
            loaded = importlib.import_module(module.name)
        except ImportError:
            continue  # its own collection reports it
        sources += [
            (module.name, value)
            for name, value in vars(loaded).items()
            if name.isupper() and isinstance(value, str) and "{" in value
        ]
    for where, text in sources:
        try:
            document = parse(text)
        except GraphQLError:
            continue  # a fragment of a document, or not GraphQL
        for definition in document.definitions:
            if not isinstance(definition, OperationDefinitionNode):
                continue
            if definition.operation is OperationType.SUBSCRIPTION:
                continue
            name = definition.name.value if definition.name else None
            if (text, name) not in seen:
                seen.add((text, name))
                yield where, text, name


class Shop:
    """One server's side of the run: what it was told, to build the next variables."""

    def __init__(self, url: str, sku: str, other: str) -> None:
        self.url = url
        self.sku, self.other = sku, other
        self.last_id = str(uuid.UUID(int=1))

    def candidates(self, type_: str, name: str) -> list[Any]:
        sku, other = self.sku, self.other
        line = {"sku": sku, "quantity": 1}
        lines = [[line], [{"sku": sku, "quantity": 999_999}], [{"sku": "NOPE-404", "quantity": 1}]]
        pools: dict[str, list[Any]] = {
            "String": [sku, "NOPE-404", ""],
            "ID": [self.last_id, str(uuid.UUID(int=7)), "not-an-id"],
            "Int": [1, 1_000_000, -1],
            "Boolean": [True, False],
            "[ReserveLineInput!]": lines,
            "[String!]": [[sku, other], [sku, "NOPE-404"], []],
            "[ID!]": [[self.last_id], ["not-an-id"], []],
        }
        if name in ("name", "reason", "note", "url", "secret"):
            pools["String"] = ["Widget", "", "x" * 300]
        if name in ("ttl", "ttlSeconds", "seconds"):
            pools["Int"] = [600, 1_000_000_000, -1]  # no hold expires during the run
        if name in ("key", "idempotencyKey", "cursor", "after"):
            pools["String"] = ["key-1", "key-1", "k" * 300]
        required = type_.endswith("!")
        values = pools.get(type_.rstrip("!"))
        if values is None:
            return []
        return values if required else [*values, None]

    def remember(self, answer: Any) -> None:
        if isinstance(answer, dict):
            for key, value in answer.items():
                if key == "id" and isinstance(value, str) and UUID.fullmatch(value):
                    self.last_id = value
                self.remember(value)
        elif isinstance(answer, list):
            for item in answer:
                self.remember(item)


def variable_sets(shop: Shop, operation: OperationDefinitionNode) -> list[dict[str, Any]] | None:
    """Three sets of variables (None: a variable of a type no pool covers)."""
    pools = {}
    for definition in operation.variable_definitions or ():
        name = definition.variable.name.value
        values = shop.candidates(print_ast(definition.type), name)
        if not values:
            return None
        pools[name] = values
    return [{name: values[i % len(values)] for name, values in pools.items()} for i in range(3)]


def normalised(body: Any, ids: dict[str, str]) -> Any:
    if isinstance(body, dict):
        return {
            key: "<request id>" if key == "requestId" else normalised(value, ids)
            for key, value in body.items()
        }
    if isinstance(body, list):
        return [normalised(item, ids) for item in body]
    if isinstance(body, str):
        body = UUID.sub(lambda m: ids.setdefault(m.group(), f"<id {len(ids)}>"), body)
        return TIME.sub("<time>", body)
    return body


async def ask(
    session: aiohttp.ClientSession, shop: Shop, payload: dict[str, Any], token: str | None
) -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(f"{shop.url}/graphql", json=payload, headers=headers) as response:
        body = json.loads(await response.read())
        kept = {h: response.headers[h] for h in HEADERS if h in response.headers}
        return response.status, kept, body


async def seeded(postgres_url: str, skus: list[str]) -> str:
    url = await create_database(postgres_url)
    conn = await asyncpg.connect(url)
    try:
        for sku in skus:
            assert await conn.fetchrow(CREATE, sku, "Differential", 5)
    finally:
        await conn.close()
    return url


@pytest.fixture
async def servers(postgres_url: str) -> AsyncIterator[tuple[Shop, Shop, ServerProcess]]:
    skus = ["DIFF-A-1", "DIFF-B-2"]
    env = dict(SERVER_ENV)
    lean = ServerProcess({**env, "DATABASE_URL": await seeded(postgres_url, skus)})
    view = ServerProcess(
        {
            **env,
            "DATABASE_URL": await seeded(postgres_url, skus),
            "INVENTORY_COMPILED_OPERATIONS": "off",
        }
    )
    with lean, view:
        yield Shop(lean.url, *skus), Shop(view.url, *skus), lean


async def compiled_count(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    found = re.search(r"^inventory_compiled_operations(?:_total)? (\S+)$", text, re.M)
    assert found, "the metric is exported"
    return float(found.group(1))


async def operation_counts(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    counts = {
        series: float(value)
        for series, value in re.findall(
            r"^(inventory_graphql_operation(?:s_count|_errors_total)\{[^}]*\}) (\S+)$", text, re.M
        )
    }
    assert len(counts) >= 10, text[:2000]
    return counts


async def test_compiled_answers_equal_the_views(
    servers: tuple[Shop, Shop, ServerProcess],
) -> None:
    lean, view, _ = servers
    documents = list(corpus())
    assert len(documents) >= 30, "the corpus holds the demo's and the tests' documents"
    lean_ids: dict[str, str] = {}
    view_ids: dict[str, str] = {}
    asked = 0
    covered: set[str] = set()
    async with aiohttp.ClientSession() as session:
        for where, text, name in documents:
            operation = next(
                d
                for d in parse(text).definitions
                if isinstance(d, OperationDefinitionNode)
                and (d.name.value if d.name else None) == name
            )
            sets_lean = variable_sets(lean, operation)
            sets_view = variable_sets(view, operation)
            if sets_lean is None or sets_view is None:
                continue
            for token in (None, ADMIN):
                for variables_lean, variables_view in zip(sets_lean, sets_view, strict=True):
                    # Each request twice: the first teaches the view's cache the document
                    # (the lean path answers the second), and both change the databases alike.
                    for _ in range(2):
                        answers = []
                        for shop, variables in ((lean, variables_lean), (view, variables_view)):
                            payload = {"query": text, "variables": variables, "operationName": name}
                            answers.append(await ask(session, shop, payload, token))
                            shop.remember(answers[-1][2])
                        (s1, h1, b1), (s2, h2, b2) = answers
                        context = f"{where} {name} as {'admin' if token else 'shopper'}"
                        assert (s1, h1) == (s2, h2), context
                        assert normalised(b1, lean_ids) == normalised(b2, view_ids), context
                        asked += 1
            covered.add(f"{where}:{name}")
        lean_answered = await compiled_count(session, lean.url)
        view_answered = await compiled_count(session, view.url)
        # Operators see the same operations, by field and kind, and the same failures.
        assert await operation_counts(session, lean.url) == await operation_counts(
            session, view.url
        )
    assert len(covered) >= 25, sorted(covered)
    assert view_answered == 0
    # Most requests took the lean path (the rest: documents seen for the first time, and
    # answers only the view gives, such as variables that do not coerce).
    assert lean_answered >= asked * 0.4, (lean_answered, asked)

"""OpenTelemetry tracing (tracing.py): off unless OTEL_* variables ask; when on, a
reserve's trace holds its operation, the coalescer's batch linked to it, and the batch's
statements under the batch.

The app runs in this process against the test PostgreSQL, with the SDK's in-memory
exporter in place of OTLP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import yaml
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp, Message

from inventory_graphql import tracing
from inventory_graphql.api.request_guards import RequestGuards
from inventory_graphql.api.schema import build_schema
from inventory_graphql.api.traced import OperationTracing
from inventory_graphql.app import create_app
from inventory_graphql.config import Settings
from inventory_graphql.inventory.coalescer import BATCH_SPAN
from tests.api.queries import RESERVE
from tests.ops.test_compose import COMPOSE_FILE, REPLICAS, environment, run_compose
from tests.support.asgi import http_scope

# A caller's trace (W3C traceparent): the operation continues it.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    configured = tracing.configure({}, exporter=exporter)
    assert configured is not None
    try:
        yield exporter
    finally:
        configured.shutdown()
    assert tracing.active() is None


@contextlib.asynccontextmanager
async def started(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """The app's lifespan, run as a server runs it; yields the state requests carry."""
    state: dict[str, Any] = {}
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}

    async def lifespan() -> None:
        await app(scope, inbox.get, outbox.put)

    task = asyncio.create_task(lifespan())
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield state
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


async def post(
    app: ASGIApp, state: dict[str, Any], payload: dict[str, Any], **headers: str
) -> dict[str, Any]:
    """One POST /graphql; the client stays connected until the answer is sent."""
    scope = http_scope("POST", "/graphql", [("content-type", "application/json"), *headers.items()])
    scope["state"] = dict(state)
    body = [orjson.dumps(payload)]
    sent: list[Message] = []
    staying = asyncio.Event()

    async def receive() -> Message:
        if body:
            return {"type": "http.request", "body": body.pop(), "more_body": False}
        await staying.wait()  # never set: the client does not leave
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200, sent
    result: dict[str, Any] = orjson.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    return result


def named(found: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in found if span.name == name]


def children(found: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [
        span
        for span in found
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


async def test_a_reserve_is_traced_from_operation_to_statement(
    spans: InMemorySpanExporter,
    database_url: str,
    make_product: Callable[[int], Any],
) -> None:
    sku = await make_product(5)
    app = create_app(Settings(), database_url)
    reserve = {"query": RESERVE, "variables": {"lines": [{"sku": sku, "quantity": 1}]}}
    async with started(app) as state:
        # Statements outside any request or batch (migrations, the pool's, the sweeper's)
        # are not traced: on an idle service they would be most traces.
        lone = [s.name for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
        assert lone == []
        first = await post(app, state, reserve, traceparent=TRACEPARENT)
        again = await post(app, state, reserve)
    assert first["data"]["reserve"]["__typename"] == "Reservation", first
    assert again["data"]["reserve"]["__typename"] == "Reservation", again
    found = list(spans.get_finished_spans())

    # The operations: both requests, the known document's too (the lean path steps
    # aside while tracing is on), the first continuing its caller's trace.
    operations = named(found, "GraphQL Query: Reserve")
    assert len(operations) == 2, [span.name for span in found]
    operation, cached = operations
    assert operation.kind is SpanKind.SERVER
    assert operation.context.trace_id == int(CALLER_TRACE, 16)
    # Parsed and validated once: the cached document's operation has neither span.
    assert {span.name for span in children(found, operation)} >= {
        "GraphQL Parsing",
        "GraphQL Validation",
        "GraphQL Resolving: reserve",
    }
    assert {span.name for span in children(found, cached)} == {"GraphQL Resolving: reserve"}

    # Each reserve's batch links to the resolver span that waited for it, in its trace.
    batches = named(found, BATCH_SPAN)
    for served in operations:
        (resolver,) = named(children(found, served), "GraphQL Resolving: reserve")
        (batch,) = [
            batch
            for batch in batches
            if any(link.context.span_id == resolver.context.span_id for link in batch.links)
        ]
        (link,) = batch.links
        assert link.context.trace_id == served.context.trace_id
        assert batch.attributes is not None and batch.attributes["inventory.batch.size"] == 1
        # The batch's statement (a lone single-line request: one grant_singles) under it.
        statements = [s for s in children(found, batch) if s.kind is SpanKind.CLIENT]
        assert statements, "no statement span under the batch"
        assert any(
            "grant_singles" in str((s.attributes or {}).get("db.statement", "")) for s in statements
        ), [s.attributes for s in statements]


def test_no_otel_variables_no_tracing() -> None:
    # The switch: nothing but an OTLP exporter or endpoint turns it on.
    assert tracing.configure({"OTEL_SERVICE_NAME": "shop"}) is None
    assert tracing.active() is None
    assert tracing.current_span() is None
    assert not AsyncPGInstrumentor().is_instrumented_by_opentelemetry
    assert not hasattr(asyncpg.connection.Connection.fetch, "__wrapped__")
    # The schema's first extension is the guards' (with tracing, the operation spans').
    assert isinstance(build_schema().extensions[0](), RequestGuards)


def test_with_tracing_the_schema_makes_operation_spans(spans: InMemorySpanExporter) -> None:
    assert isinstance(build_schema().extensions[0](), OperationTracing)


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://j:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://j:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_otel_variables_switch_tracing_on(env: dict[str, str], on: bool) -> None:
    assert tracing.requested(env) is on


def test_an_exporter_it_cannot_use_is_refused() -> None:
    with pytest.raises(tracing.TracingError, match="OTEL_TRACES_EXPORTER"):
        tracing.requested({"OTEL_TRACES_EXPORTER": "zipkin"})


# Run in a process where no opentelemetry package can be imported.
WITHOUT_EXTRA = """
import importlib.abc, logging, sys

class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ImportError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoOpenTelemetry())
logging.basicConfig(level=logging.INFO, format="%(message)s")
from inventory_graphql import tracing
from inventory_graphql.app import create_app
from inventory_graphql.config import Settings

assert tracing.configure({}) is None
assert tracing.configure({"OTEL_TRACES_EXPORTER": "otlp"}) is None
create_app(Settings(), "postgresql://nobody@localhost/unused")
print("built")
"""


def test_the_service_runs_without_the_tracing_extra() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "built"
    # Asked for without the extra: said once, with how to install it.
    assert done.stderr.count("the tracing extra is not installed") == 1, done.stderr
    assert "inventory-graphql[tracing]" in done.stderr


# --- docker-compose.yml: Jaeger behind the `tracing` profile -------------------------------


def test_compose_offers_jaeger_only_behind_the_tracing_profile() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    jaeger = services["jaeger"]
    assert jaeger.get("profiles") == ["tracing"]
    assert {"4318:4318", "16686:16686"} <= set(jaeger["ports"])
    for name, service in services.items():
        # A replica needing Jaeger would not start without the profile.
        assert "jaeger" not in (service.get("depends_on") or {}), name


def test_compose_replicas_trace_only_when_given_an_endpoint(tmp_path: Path) -> None:
    for endpoint, on in (("", False), ("http://jaeger:4318", True)):
        result = run_compose(
            tmp_path, "config", INVENTORY_ADMIN_TOKEN="t", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint
        )
        assert result.returncode == 0, result.stderr
        rendered = yaml.safe_load(result.stdout)["services"]
        for name in REPLICAS:
            env = environment(rendered[name])
            assert tracing.requested(env) is on, (name, env)
            assert env["OTEL_SERVICE_NAME"] == "inventory-graphql"

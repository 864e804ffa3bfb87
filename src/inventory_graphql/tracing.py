"""OpenTelemetry traces, off unless the standard `OTEL_*` variables ask for them.

On when `OTEL_TRACES_EXPORTER` is `otlp`, or when it is unset and
`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; never when
`OTEL_SDK_DISABLED` is `true`. Spans go over OTLP/HTTP; the exporter reads its other
`OTEL_EXPORTER_OTLP_*` variables itself, the resource `OTEL_SERVICE_NAME` and
`OTEL_RESOURCE_ATTRIBUTES`.

What is traced: each GraphQL operation (api/traced.py), the asyncpg statements run for
it, and each coalesced reservation batch, linked to the requests it answered (the
batch's statements are its children). Statements outside any request or batch (the
expiry sweeper's, the pool's) are left out unless `OTEL_TRACES_SAMPLER` chooses another
sampler (`parentbased_always_on`: everything).

The packages come with the `tracing` extra and are imported only when tracing is on, so
the service runs without them. Each server process configures its own provider (the
app is built per worker: `serve` points uvicorn's factory at `app_from_env` here) and
flushes it when the app shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Link, SpanContext, Tracer, TraceState
    from opentelemetry.util.types import Attributes
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

SERVICE_NAME = "inventory-graphql"
EXTRA = "pip install 'inventory-graphql[tracing]'"


class TracingError(ValueError):
    """An `OTEL_*` variable asks for something this service cannot do."""


def requested(env: Mapping[str, str]) -> bool:
    """Whether these variables ask for traces (see the module's docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    exporters = [e for e in exporters if e]
    if exporters:
        unknown = sorted(set(exporters) - {"otlp", "none"})
        if unknown:
            raise TracingError(
                f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not supported; "
                "expected otlp or none"
            )
        return "otlp" in exporters
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


@dataclass
class Tracing:
    """This process's tracing: its provider, and the tracer the service's own spans use."""

    provider: TracerProvider
    tracer: Tracer

    def shutdown(self) -> None:
        """Flush what is buffered, stop exporting, and take the asyncpg hooks off."""
        global _active
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        if _active is not self:
            return  # shut down already
        _active = None
        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        self.provider.shutdown()


# Set while tracing is on in this process; read on every request and batch, so "off"
# costs one global read.
_active: Tracing | None = None


def active() -> Tracing | None:
    return _active


def configure(
    env: Mapping[str, str] | None = None, *, exporter: SpanExporter | None = None
) -> Tracing | None:
    """Turn tracing on in this process if `env` (default: the process environment) asks
    for it. `exporter` replaces OTLP, flushed span by span (the tests' in-memory one).

    Returns None when tracing is off, or asked for without the `tracing` extra (logged).
    Raises TracingError for an exporter other than otlp.
    """
    global _active
    env = os.environ if env is None else env
    if _active is not None or not (exporter is not None or requested(env)):
        return _active
    try:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as missing:
        log.error(
            "tracing is asked for (OTEL_* variables) but the tracing extra is not installed "
            "(%s): no traces are sent; install it with %s",
            missing,
            EXTRA,
        )
        return None
    resource = Resource.create({})  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    # The SDK reads OTEL_TRACES_SAMPLER itself when no sampler is given.
    sampler = None if env.get("OTEL_TRACES_SAMPLER") else _no_lone_statements()
    provider = TracerProvider(resource=resource, sampler=sampler)
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("tracing on: spans go over OTLP/HTTP to %s", _endpoint(env))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    # Statement text only: parameters (buyer ids, skus) stay out of the traces.
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
    _active = Tracing(provider, provider.get_tracer("inventory_graphql"))
    return _active


def _endpoint(env: Mapping[str, str]) -> str:
    """Where the OTLP exporter sends, as it reads the variables."""
    if traces := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return traces
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


def _no_lone_statements() -> Sampler:
    """Every span, but statements outside any request or batch (the expiry sweeper's, the
    pool's, the listener's): a few a second on an idle service, each a trace of its own."""
    from opentelemetry.sdk.trace import sampling
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, SamplingResult
    from opentelemetry.trace import SpanKind

    class NoLoneStatements(sampling.Sampler):
        def should_sample(
            self,
            parent_context: Context | None,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Attributes = None,
            links: Sequence[Link] | None = None,
            trace_state: TraceState | None = None,
        ) -> SamplingResult:
            statement = attributes and ("db.system" in attributes or "db.system.name" in attributes)
            if kind is SpanKind.CLIENT and statement and not links:
                return SamplingResult(Decision.DROP)
            return ALWAYS_ON.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )

        def get_description(self) -> str:
            return "NoLoneStatements"

    return ParentBased(root=NoLoneStatements())


def current_span() -> SpanContext | None:
    """The span the caller runs in, to link to later; None when tracing is off."""
    if _active is None:
        return None
    from opentelemetry import trace

    found = trace.get_current_span().get_span_context()
    return found if found.is_valid else None


@contextlib.contextmanager
def span(
    name: str, links: Iterable[SpanContext | None] = (), attributes: Mapping[str, Any] | None = None
) -> Iterator[None]:
    """A span of the service's own, current while the block runs (so asyncpg's statement
    spans are its children), linked to `links`. Nothing when tracing is off."""
    if _active is None:
        yield
        return
    from opentelemetry.trace import Link

    linked = [Link(context) for context in links if context is not None]
    with _active.tracer.start_as_current_span(name, links=linked, attributes=attributes):
        yield


def app_from_env() -> ASGIApp:
    """`app.app_from_env` with tracing configured first, for uvicorn's factory: each worker
    process sets up its own provider, flushed when the app shuts down."""
    from inventory_graphql.app import app_from_env as build

    configured = configure()
    app = build()
    return app if configured is None else _flushed_at_shutdown(app, configured)


def _flushed_at_shutdown(app: ASGIApp, configured: Tracing) -> ASGIApp:
    """`app`, shutting the provider down (its last spans sent) as the lifespan ends: not
    at exit, since a worker dies of the SIGTERM uvicorn raises again once it has stopped."""

    async def traced(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await asyncio.to_thread(configured.shutdown)  # blocks while it exports
            await send(message)

        await app(scope, receive, sending)

    return traced

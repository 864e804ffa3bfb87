"""The operation spans: Strawberry's OpenTelemetry extension, as this service runs it.

Imported only when tracing is on (it needs the `tracing` extra). Two changes to
Strawberry's extension, both through its public hooks:

- No parse or validation span for a document the cache answers (request_guards.py):
  nothing is parsed or validated then, and a span per request would cost more than
  the work it times.
- The operation span continues the caller's trace when the request carries a W3C
  `traceparent` header (a shop's backend calling the service, say).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.trace import TracerProvider
from strawberry.extensions.tracing import OpenTelemetryExtension

from inventory_graphql.api.request_guards import Guards


class OperationTracing(OpenTelemetryExtension):
    def __init__(self, guards: Guards, tracer_provider: TracerProvider) -> None:
        super().__init__(tracer_provider=tracer_provider)
        self.guards = guards

    def on_operation(self) -> Generator[None, None, None]:
        # The span starts on the hook's first step: under the caller's context, if any.
        token = otel_context.attach(propagate.extract(self._headers()))
        try:
            steps = super().on_operation()
            next(steps)
        finally:
            otel_context.detach(token)
        try:
            yield
        finally:
            next(steps, None)  # ends the span

    def on_parse(self) -> Generator[None, None, None]:
        text = self.execution_context.query
        if text and self.guards.documents.get(text) is not None:
            yield  # cached: nothing is parsed
        else:
            yield from super().on_parse()

    def on_validate(self) -> Generator[None, None, None]:
        context = self.execution_context
        entry = self.guards.documents.get(context.query) if context.query else None
        if entry is not None and entry.validated_with == context.validation_rules:
            yield  # validated before, with these rules: request_guards answers from cache
        else:
            yield from super().on_validate()

    def _headers(self) -> dict[str, str]:
        request = getattr(self.execution_context.context, "request", None)
        headers: Any = getattr(request, "headers", None)
        return dict(headers) if headers is not None else {}

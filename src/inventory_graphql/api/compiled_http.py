"""The lean request path: a POST whose document has a plan (compiled.py), answered
without Strawberry's view and schema hooks.

Strawberry runs its whole HTTP view for every request (body parsing, context, each
extension's hooks as context managers, result processing) even for a document it has
seen thousands of times; that machinery was about two thirds of a reservation's server
CPU. Here a request whose document is cached, valid and compiled is answered directly:
the same checks in the same order (the caller's token, the trusted-documents policy,
request_guards' limits and the client's cost budget, variable coercion), the same
resolvers, the same error policy and metrics, the same JSON. Anything else (another
method or content type, a body that is not one JSON object or over the size limit, a
refusal, a variable that does not coerce, an uncompiled document, a client being held
for spending too fast) goes to the whole app untouched, its body replayed: the view
gives every answer that is not the ordinary one, so one place words each refusal.
tests/api/test_compiled_differential.py holds both paths to the same answers.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
import strawberry
from graphql import DocumentNode, GraphQLError, GraphQLSchema, OperationDefinitionNode
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from strawberry.types.base import StrawberryObjectDefinition

from inventory_graphql import tracing
from inventory_graphql.api.client_limits import client_of
from inventory_graphql.api.compiled import NotCompilable, Plan, coerce_variables, compile_operation
from inventory_graphql.api.context import Context
from inventory_graphql.api.cost_budget import HOLD_SECONDS
from inventory_graphql.api.direct_resolvers import direct_resolvers
from inventory_graphql.api.document_cache import CachedDocument
from inventory_graphql.api.errors import shown_error
from inventory_graphql.api.internals import core_schema
from inventory_graphql.api.media_types import JSON_UTF8
from inventory_graphql.api.observability import operation_labels
from inventory_graphql.api.request_guards import (
    Guards,
    priced,
    rate_limited,
    timed_out,
    variable_values,
)
from inventory_graphql.metrics import Metrics
from inventory_graphql.request_id import current_request_id, request_id_of, request_id_set

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
JSON = b"application/json"
ANSWER_TYPE = JSON_UTF8.encode()  # as the view answers (http.py)


class View(Protocol):
    """What the lean path asks of the GraphQL view (api/http.py's endpoint)."""

    async def get_context(self, request: Any, response: Any) -> Context: ...

    def admit_document(self, query: object, document_id: object, context: Any) -> str | None: ...


class Compiled:
    """One compiled operation of a document, with what the request path needs of it."""

    def __init__(self, plan: Plan, labels: tuple[str, str]) -> None:
        self.plan = plan
        self.labels = labels
        # This operation's duration series in the app's metrics (labels() takes a lock).
        self.series: tuple[Metrics, Any] | None = None

    def observe(self, metrics: Metrics, seconds: float, failed: bool) -> None:
        if self.series is None or self.series[0] is not metrics:
            self.series = (metrics, metrics.operations.labels(*self.labels))
        self.series[1].observe(seconds)
        if failed:  # made on the first failure, as OperationMetrics makes it
            metrics.operation_errors.labels(*self.labels).inc()


class LeanPath:
    def __init__(
        self, schema: strawberry.Schema, guards: Guards, *, hide_suggestions: bool
    ) -> None:
        core = core_schema(schema)
        assert core is not None, "a Strawberry schema has a graphql-core schema"
        self.schema = core
        self.guards = guards
        self.hide_suggestions = hide_suggestions
        self.basic = _basic_fields(schema, core)
        self.direct = direct_resolvers(schema)
        self.answered = 0  # requests this path answered (the rest went to the view)

    async def answer(
        self, view: View, scope: Scope, receive: Receive, send: Send, body: bytes
    ) -> bool:
        """Answer the request whose body is `body`; False (nothing sent): the view must."""
        started = time.perf_counter()
        try:
            data = orjson.loads(body)
        except ValueError:
            return False
        if not isinstance(data, dict):
            return False
        query, variables = data.get("query"), data.get("variables")
        name = data.get("operationName")
        if not (
            isinstance(query, str | None)
            and isinstance(variables, dict | None)
            and isinstance(name, str | None)
            and isinstance(data.get("extensions"), dict | None)
        ):
            return False
        response = _SubResponse()
        try:
            context = await view.get_context(Request(scope, receive), response)
            text = view.admit_document(query, data.get("documentId"), context)
        except Exception:  # a refusal (or a bug): the view answers it
            return False
        entry = self.guards.documents.get(text) if text is not None else None
        if entry is None or entry.validated_with is None or entry.errors:
            return False
        compiled = self._compiled(entry, name)
        if compiled is None:
            return False
        price = self._price(entry, name, variables, context)
        if price is None:
            return False
        coerced = coerce_variables(compiled.plan, variables)
        if isinstance(coerced, list):
            return False  # the view words the coercion errors
        errors: list[GraphQLError]
        if (refusal := await self._over_budget(context, price, response)) is not None:
            result, errors = None, [refusal]
        else:
            result, errors = await self._execute(compiled.plan, context, coerced, response)
        shown = []
        for error in errors:
            error, status = shown_error(error, hide_suggestions=self.hide_suggestions)
            if status is not None:
                response.status_code = status
                response.headers["Retry-After"] = "1"
            shown.append(error.formatted)
        payload = {"data": result, "errors": shown} if shown else {"data": result}
        await _send_json(send, orjson.dumps(payload), response, current_request_id())
        self.answered += 1
        if context.metrics is not None:
            compiled.observe(context.metrics, time.perf_counter() - started, bool(shown))
        return True

    def _compiled(self, entry: CachedDocument, name: str | None) -> Compiled | None:
        known = entry.plans.get(name)
        if known is not None:
            return known if isinstance(known, Compiled) else None
        try:
            plan = compile_operation(
                self.schema, entry.document, name, lambda t, f: (t, f) in self.basic, self.direct
            )
        except NotCompilable as reason:
            found: object = reason
        else:
            found = Compiled(plan, operation_labels(entry.document, self.schema))
        if name is None or name in _names(entry.document):
            entry.plans[name] = found  # only the document's own names: a client's would grow it
        return found if isinstance(found, Compiled) else None

    def _price(
        self, entry: CachedDocument, name: str | None, variables: Any, context: Context
    ) -> int | None:
        """What request_guards charges: the variables' size and the operation's cost.
        None when a guard would refuse, or the cost depends on the variables."""
        limits = self.guards.limits
        if entry.fields is None or entry.fields > limits.max_fields:
            return None
        max_values = limits.max_variable_values
        if context.is_admin:
            max_values = max(max_values, limits.admin_variable_values)
        values, problem = variable_values(variables, max_values, limits.max_variable_depth)
        if problem:
            return None
        cost, refusal = priced(self.guards, entry, name, variables)
        return None if refusal else cost + values

    async def _over_budget(
        self, context: Context, price: int, response: Response
    ) -> GraphQLError | None:
        budget = context.cost_budget
        if budget is None or context.is_admin:
            return None
        over = budget.spend(client_of(context.request.scope), price)
        if over is None:
            return None
        await asyncio.sleep(min(over.retry_after, HOLD_SECONDS))  # as request_guards does
        response.status_code = 429
        response.headers["Retry-After"] = str(math.ceil(over.retry_after))
        return rate_limited(over)

    async def _execute(
        self, plan: Plan, context: Context, variables: Any, response: Response
    ) -> tuple[dict[str, Any] | None, list[GraphQLError]]:
        budget = self.guards.limits.query_timeout_seconds
        if budget is None or plan.serial:  # mutations: see request_guards.on_execute
            return await plan.execute(context, variables)
        try:
            async with asyncio.timeout(budget):
                return await plan.execute(context, variables)
        except TimeoutError:
            response.status_code = 503
            response.headers["Retry-After"] = "1"
            return None, [timed_out(budget)]


def _basic_fields(schema: strawberry.Schema, core: GraphQLSchema) -> frozenset[tuple[str, str]]:
    """(type, field) of every field Strawberry resolves as a plain attribute read."""
    basic = set()
    for name in core.type_map:
        definition = schema.get_type_by_name(name)
        if not isinstance(definition, StrawberryObjectDefinition):
            continue
        for field in definition.fields:
            if field.is_basic_field:
                basic.add((name, schema.config.name_converter.get_graphql_name(field)))
    return frozenset(basic)


def _names(document: DocumentNode) -> set[str]:
    return {
        d.name.value
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode) and d.name is not None
    }


class _SubResponse(Response):
    """What Strawberry's view hands resolvers to set a status or headers on (no status,
    no headers), without building a body's headers it then deletes."""

    def __init__(self) -> None:
        self.status_code = None  # type: ignore[assignment]
        self.raw_headers = []
        self.background = None


class LeanGate:
    """The outermost ASGI app: `POST /graphql` with a JSON body goes to the lean path, which
    does here what the app's middleware and route would (the request id, the body size
    limit, the budget gate's check); everything else, and whatever the lean path does not
    answer, goes through the whole Starlette app as it came."""

    def __init__(
        self,
        app: ASGIApp,
        lean: LeanPath,
        view: View,
        *,
        max_body_bytes: int,
        exempt: Callable[[Headers], bool],
    ) -> None:
        self.app = app
        self.lean = lean
        self.view = view
        self.max_body_bytes = max_body_bytes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            # Traced requests take the view, where Strawberry's extension makes their
            # operation spans: one place makes them, the same whichever path would answer.
            and tracing.active() is None
            and scope["path"] == "/graphql"
            and not scope.get("root_path")
            and self._json_within_limit(scope)
            and not self._held(scope)
        ):
            await self.app(scope, receive, send)
            return
        body, replay = await _read_body(receive, self.max_body_bytes)
        if body is not None:
            with request_id_set(request_id_of(scope)):
                if await self.lean.answer(self.view, scope, receive, send, body):
                    return
        await self.app(scope, replay, send)

    def _json_within_limit(self, scope: Scope) -> bool:
        if scope["method"] != "POST":
            return False
        json = False
        for name, value in scope["headers"]:
            if name == b"content-type":
                json = value.split(b";", 1)[0].strip().lower() == JSON
            elif name == b"content-length" and (
                not value.isdigit() or int(value) > self.max_body_bytes
            ):
                return False  # BodySizeLimitMiddleware refuses it
        return json

    def _held(self, scope: Scope) -> bool:
        # A client whose last operation was refused RATE_LIMITED: BudgetGate holds it.
        budget = scope["state"]["cost_budget"]
        return bool(budget.wait(client_of(scope))) and not self.exempt(Headers(scope=scope))


async def _read_body(receive: Receive, max_bytes: int) -> tuple[bytes | None, Receive]:
    """The request's whole body (None: the client left first, or it is over `max_bytes`),
    and a receive that replays what was read, for the app."""
    messages: list[Message] = []
    chunks = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes or not message.get("more_body", False):
            break
    last = messages[-1]
    complete = last["type"] == "http.request" and not last.get("more_body", False)
    body = b"".join(chunks) if complete and size <= max_bytes else None

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return body, replay


async def _send_json(send: Send, body: bytes, response: Response, request_id: str) -> None:
    # As Strawberry's view builds it (its JSON, then the headers the operation set), and
    # the request id as RequestIdMiddleware adds it.
    headers = [
        (b"content-length", str(len(body)).encode()),
        (b"content-type", ANSWER_TYPE),
        *response.headers.raw,
        (b"x-request-id", request_id.encode()),
    ]
    await send(
        {"type": "http.response.start", "status": response.status_code or 200, "headers": headers}
    )
    await send({"type": "http.response.body", "body": body})

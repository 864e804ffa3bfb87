"""The fence: every use of Strawberry's and graphql-core's private or undocumented names.

Nothing else in the service touches framework internals. Written against the versions in
FENCED_VERSIONS; `tests/unit/test_internals.py` fails loudly when the installed versions
differ, and checks that every name below still exists. To upgrade: read each item, run
the suite with `INVENTORY_DIRECT_DELIVERY=on` and `=off`, then update FENCED_VERSIONS.
With `INVENTORY_DIRECT_DELIVERY=off` items 1-4 are not used at all (subscriptions take
Strawberry's ordinary path), so an upgrade that breaks them can still go ahead.

What is touched, and why:
1. `strawberry.Info._raw_info`: graphql-core's resolve info behind Strawberry's Info.
   Direct delivery needs the field nodes, fragments and operation it carries; Strawberry
   exposes no public accessor for them.
2. `strawberry.schema.schema.StrawberryGraphQLCoreExecutionContext` (not exported) and
   graphql-core's `ExecutionContext.build` / `build_per_event_executor` /
   `execute_operation` (public methods, undocumented): direct delivery executes a
   subscriber's selection on an update once per process, as graphql-core does per event.
3. `BaseGraphQLTransportWSHandler.run_operation` and its `Operation` (`id`, `query`,
   `variables`, `operation_name`, `completed`): the operation's own task records which
   operation it runs, so its resolver can write updates straight to the socket.
4. (Always on, harmless when absent) graphql-core 3.3's `ExecutionContext.
   _relevant_sub_fields` memo, shared by every per-event executor of a subscription and
   keyed by new lists: it grows by ~20 objects per delivered update for the life of the
   subscription. Each per-event executor gets a memo of its own.
5. (Always on) `BaseGraphQLTransportWSHandler.handle_message` / `handle_invalid_message`:
   Strawberry indexes every message as a dict, so a JSON array or number crashed the
   connection (1006); it is refused as the protocol says (close 4400). A `connection_init`
   whose payload is null, which the protocol allows, reaches Strawberry without one
   (Strawberry closed it with 4400; absent, it reads as `{}`).
6. (Always on, optional) `strawberry.Schema._schema`, the graphql-core schema: operation
   metrics label operations by root field only when the field exists in the schema (a
   label per client-chosen name would be unbounded). Without it every label is "unknown".
7. (Always on) Trusted documents (api/trusted_documents.py): `AsyncBaseHTTPView.
   parse_http_body`, `execute_single` and `should_render_graphql_ide` (public methods,
   undocumented; a GET with only a documentId is no request for GraphiQL): Strawberry's
   parser drops a request's `documentId`, so the body or query string is read here as it
   reads them (GET parameters, or one JSON object; a service without stream transports
   or uploads has no other shape); a refused document is answered as a GraphQL result
   before anything is parsed. Over WebSocket, `handle_message` (item 5) translates a
   subscribe payload's `documentId` the same way, using the handler's
   `connection_acknowledged` and `operations` to leave protocol errors to Strawberry.
8. (Always on) `MaskErrors._process_result` and `_process_errors`: Strawberry tests every
   result against a runtime-checkable Protocol, which costs ~2% of a reservation's CPU;
   `ErrorMasking` asks for the result's `errors` directly (the same test).
9. (Always on) graphql-core's `Executor.async_helpers` (a public attribute, undocumented)
   and its `track_async_work` / `gather_async_work`: it keeps the resolve-info helpers as
   bound methods of the executor, a reference cycle per request (with everything the
   executor holds hanging off it) that only the garbage collector frees; ours reach the
   executor through a weak reference. tests/unit/test_internals.py checks that executing
   an operation leaves no cycle.
10. (With INVENTORY_COMPILED_OPERATIONS on) Strawberry's `Info(_raw_info=, _field=)`: a
   compiled plan calls a field's resolver as Strawberry's wrapper does (api/
   direct_resolvers.py), giving it the Info the wrapper would build. The differential
   test (tests/api/test_compiled_differential.py) compares every answer with the view's.
"""

from __future__ import annotations

import contextvars
import dataclasses
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, cast

from cross_web import AsyncHTTPRequestAdapter, HTTPException, parse_content_type
from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    GraphQLResolveInfo,
    GraphQLResolveInfoHelpers,
    GraphQLSchema,
)
from starlette.requests import Request
from starlette.responses import Response
from strawberry.asgi import GraphQL
from strawberry.extensions import MaskErrors
from strawberry.http import GraphQLRequestData
from strawberry.http.base import BaseRequestProtocol
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.types import ExecutionResult as StrawberryResult
from strawberry.types import Info

FENCED_VERSIONS = {"strawberry-graphql": "0.341.2", "graphql-core": "3.3.2"}


def installed_versions() -> dict[str, str]:
    return {name: version(name) for name in FENCED_VERSIONS}


# 1. Strawberry's Info -> graphql-core's.


def raw_info(info: Info[Any, Any]) -> GraphQLResolveInfo[Any]:
    raw: GraphQLResolveInfo[Any] = info._raw_info
    return raw


# 2 and 4. The executor.


class Executor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, with two repairs (items 4 and 9)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.async_helpers = _weak_helpers(self)

    def build_per_event_executor(self, payload: Any) -> Executor:
        # graphql-core builds the copy with this executor's class.
        executor = cast(Executor, super().build_per_event_executor(payload))
        if isinstance(getattr(executor, "_relevant_sub_fields", None), dict):
            executor._relevant_sub_fields = {}
        return executor


def _weak_helpers(executor: Executor) -> GraphQLResolveInfoHelpers:
    # A resolver runs while its executor drives it, so the executor is alive whenever a
    # helper is called (per-event copies share the helpers of the executor they copy, which
    # lives as long as its subscription).
    ref = weakref.ref(executor)

    def live() -> Executor:
        executor = ref()
        assert executor is not None, "a resolver ran after its executor was gone"
        return executor

    def track(values: Sequence[Any]) -> None:
        live().track_async_work(values)

    def gather(values: Sequence[Awaitable[Any]]) -> Awaitable[list[Any]]:
        return live().gather_async_work(values)

    return GraphQLResolveInfoHelpers(gather=gather, track=track)


def subscription_executor(
    info: GraphQLResolveInfo[Any],
    variables: dict[str, object] | None,
    operation_name: str | None,
) -> Executor:
    """An executor for the operation `info` belongs to, as graphql-core builds one for a
    subscription (its variables were accepted when the operation started)."""
    document = DocumentNode(definitions=(info.operation, *info.fragments.values()))
    built = Executor.build(
        info.schema,
        document,
        context_value=info.context,
        raw_variable_values=variables,
        operation_name=operation_name,
    )
    # The operation's variables were accepted when it started: no errors come back.
    assert isinstance(built, Executor), built
    return built


async def execute_event(executor: Executor, payload: object) -> ExecutionResult:
    """The operation's result for one event, as graphql-core computes it per event."""
    result = executor.build_per_event_executor(payload).execute_operation(False)
    if executor.is_awaitable(result):
        result = await result
    assert isinstance(result, ExecutionResult), "no @defer or @stream in subscriptions"
    return result


# 3 and 5. The graphql-transport-ws handler.


@dataclass(frozen=True)
class LiveOperation:
    """What direct delivery needs of a graphql-transport-ws operation."""

    id: str
    query: str
    operation_name: str | None
    variables: dict[str, object] | None
    completed: Callable[[], bool]


_current_operation: contextvars.ContextVar[LiveOperation | None] = contextvars.ContextVar(
    "current_operation", default=None
)


def current_operation() -> LiveOperation | None:
    """The graphql-transport-ws operation whose resolvers run in this task, if any."""
    return _current_operation.get()


class GuardedTransportWsHandler(BaseGraphQLTransportWSHandler[Any, None]):
    """Strawberry's handler, refusing messages that are not JSON objects and taking a null
    connection_init payload for none (item 5), and admitting each subscribe message's
    document as the view decides (item 7)."""

    async def handle_message(self, message: object) -> None:
        if not isinstance(message, dict):
            await self.handle_invalid_message("Failed to parse message")
            return
        if message.get("type") == "connection_init" and message.get("payload", {}) is None:
            message = {"type": "connection_init"}
        if message.get("type") == "subscribe":
            admitted = await self._admitted(message)
            if admitted is None:
                return
            message = admitted
        await super().handle_message(message)  # type: ignore[arg-type]

    async def _admitted(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The message with the text to run; None once it has been refused."""
        payload, operation_id = message.get("payload"), message.get("id")
        if not (
            isinstance(self.view, DocumentIdView)
            and self.connection_acknowledged
            and isinstance(payload, dict)
            and isinstance(operation_id, str)
            and operation_id not in self.operations
        ):
            return message  # Strawberry answers these as the protocol says
        try:
            query = self.view.admit_document(
                payload.get("query"), payload.get("documentId"), self.context
            )
        except GraphQLError as refused:
            await self.send_message(
                {"id": operation_id, "type": "error", "payload": [refused.formatted]}
            )
            return None
        if query is None or query is payload.get("query"):
            return message
        return {**message, "payload": {**payload, "query": query}}


class DirectDeliveryTransportWsHandler(GuardedTransportWsHandler):
    """Also records, in the operation's own task, which operation it runs (item 3)."""

    async def run_operation(self, operation: Operation[Any, None]) -> None:
        _current_operation.set(
            LiveOperation(
                id=operation.id,
                query=operation.query,
                operation_name=operation.operation_name,
                variables=operation.variables,
                completed=lambda: operation.completed,
            )
        )
        await super().run_operation(operation)


# 6. The graphql-core schema.


def core_schema(schema: object) -> GraphQLSchema | None:
    found = getattr(schema, "_schema", None)
    return found if isinstance(found, GraphQLSchema) else None


# 7. Trusted documents: a request's documentId, and a refusal before anything is parsed.


@dataclass
class DocumentRequestData(GraphQLRequestData):
    """A request's parameters with its `documentId` (GraphQL-over-HTTP persisted documents)."""

    document_id: object = None


class DocumentIdView(GraphQL[Any, None]):
    """Strawberry's ASGI view, asking `admit_document` what text a request runs."""

    def admit_document(self, query: object, document_id: object, context: Any) -> str | None:
        """The text to run (from `query`, or the document `document_id` names); raise a
        GraphQLError to answer with it instead, nothing parsed or run."""
        return query if isinstance(query, str) else None

    def refuse_operation(
        self, query: str, operation_name: str | None, method: str, sub_response: Response
    ) -> GraphQLError | None:
        """An error to answer with instead of running the admitted `query` (nothing run),
        or None to run it as Strawberry would."""
        return None

    def should_render_graphql_ide(self, request: BaseRequestProtocol) -> bool:
        # A GET with a documentId but no query is a request, not a browser wanting GraphiQL.
        return request.query_params.get("documentId") is None and super().should_render_graphql_ide(
            request
        )

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        content_type, _ = parse_content_type(request.content_type or "")
        if request.method == "GET":
            data = self.parse_query_params(request.query_params)
        elif "application/json" in content_type:
            data = self.parse_json(await request.get_body())
        else:
            return await super().parse_http_body(request)  # its refusals
        if not isinstance(data, dict):
            raise HTTPException(400, "The request body must be one JSON object.")
        for key, kind, shape in (
            ("query", str, "a string"),
            ("operationName", str, "a string"),
            ("variables", dict, "an object"),
            ("extensions", dict, "an object"),
        ):
            if not isinstance(data.get(key), kind | None):
                raise HTTPException(
                    400, f"The GraphQL operation's `{key}` must be {shape} or null, if provided."
                )
        return DocumentRequestData(
            query=data.get("query"),
            variables=data.get("variables"),
            operation_name=data.get("operationName"),
            extensions=data.get("extensions"),
            document_id=data.get("documentId"),
        )

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Any,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> StrawberryResult:
        try:
            query = self.admit_document(
                request_data.query, getattr(request_data, "document_id", None), context
            )
        except GraphQLError as refused:
            return StrawberryResult(data=None, errors=[refused])
        if isinstance(query, str) and (
            turned_away := self.refuse_operation(
                query, request_data.operation_name, request_adapter.method, sub_response
            )
        ):
            return StrawberryResult(data=None, errors=[turned_away])
        return await super().execute_single(
            request=request,
            request_adapter=request_adapter,
            sub_response=sub_response,
            context=context,
            root_value=root_value,
            request_data=request_data
            if query is request_data.query
            else dataclasses.replace(request_data, query=query),
        )


# 8. MaskErrors without the Protocol test.
class ErrorMasking(MaskErrors):
    def _process_result(self, result: object) -> None:
        errors = getattr(result, "errors", None)
        if errors:
            result.errors = self._process_errors(errors)  # type: ignore[attr-defined]


# 10. Strawberry's Info for a resolver called directly.
def strawberry_info(raw: GraphQLResolveInfo[Any], field: Any) -> Info[Any, Any]:
    """The Info Strawberry's own resolver wrapper would give `field`'s resolver."""
    return Info(_raw_info=raw, _field=field)

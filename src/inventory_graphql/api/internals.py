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
   connection (1006); it is refused as the protocol says (close 4400).
6. (Always on, optional) `strawberry.Schema._schema`, the graphql-core schema: operation
   metrics label operations by root field only when the field exists in the schema (a
   label per client-chosen name would be unbounded). Without it every label is "unknown".
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, cast

from graphql import DocumentNode, ExecutionResult, GraphQLResolveInfo, GraphQLSchema
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
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
    """Strawberry's executor, with one repair (item 4)."""

    def build_per_event_executor(self, payload: Any) -> Executor:
        # graphql-core builds the copy with this executor's class.
        executor = cast(Executor, super().build_per_event_executor(payload))
        if isinstance(getattr(executor, "_relevant_sub_fields", None), dict):
            executor._relevant_sub_fields = {}
        return executor


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
    """Strawberry's handler, refusing messages that are not JSON objects (item 5)."""

    async def handle_message(self, message: object) -> None:
        if not isinstance(message, dict):
            await self.handle_invalid_message("Failed to parse message")
            return
        await super().handle_message(message)  # type: ignore[arg-type]


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

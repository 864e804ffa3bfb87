"""The fence around framework internals (api/internals.py) notices an upgrade."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import gc
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import strawberry
from graphql import Executor as CoreExecutor
from strawberry.asgi import GraphQL
from strawberry.extensions import MaskErrors
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.types import Info
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import Server, ServerState

from inventory_graphql import http_protocol
from inventory_graphql.api import internals
from inventory_graphql.api.schema import schema

SRC = Path(internals.__file__).resolve().parents[1]
FENCE_ADVICE = (
    "Strawberry or graphql-core is not the version api/internals.py was written for. Read "
    "every item in its header, run the suite with INVENTORY_DIRECT_DELIVERY=on and =off, "
    "then update FENCED_VERSIONS."
)


def test_the_installed_framework_is_the_one_the_fence_was_written_for():
    assert internals.installed_versions() == internals.FENCED_VERSIONS, FENCE_ADVICE


def test_every_fenced_name_still_exists():
    assert "_raw_info" in Info.__dataclass_fields__ or hasattr(Info, "_raw_info"), FENCE_ADVICE
    assert issubclass(StrawberryGraphQLCoreExecutionContext, CoreExecutor), FENCE_ADVICE
    for method in ("build", "build_per_event_executor", "execute_operation", "is_awaitable"):
        assert callable(getattr(CoreExecutor, method, None)), (method, FENCE_ADVICE)
    for method in ("run_operation", "handle_message", "handle_invalid_message"):
        assert callable(getattr(BaseGraphQLTransportWSHandler, method, None)), FENCE_ADVICE
    for slot in ("id", "query", "variables", "operation_name", "completed"):
        assert slot in Operation.__slots__, (slot, FENCE_ADVICE)
    # Item 7: the view methods trusted documents override, the handler state they read.
    for method in ("parse_http_body", "execute_single", "should_render_graphql_ide"):
        assert callable(getattr(GraphQL, method, None)), (method, FENCE_ADVICE)
    handler_init = inspect.getsource(BaseGraphQLTransportWSHandler.__init__)
    for attribute in ("self.connection_acknowledged", "self.operations", "self.view"):
        assert attribute in handler_init, (attribute, FENCE_ADVICE)
    assert internals.core_schema(schema) is not None, FENCE_ADVICE
    # Items 8 and 9.
    for method in ("_process_result", "_process_errors"):
        assert callable(getattr(MaskErrors, method, None)), (method, FENCE_ADVICE)
    for method in ("track_async_work", "gather_async_work"):
        assert callable(getattr(CoreExecutor, method, None)), (method, FENCE_ADVICE)
    assert "self.async_helpers = " in inspect.getsource(CoreExecutor.__init__), FENCE_ADVICE
    # Item 10: Strawberry's Info is built from these two, and its wrapper builds it so.
    assert {"_raw_info", "_field"} <= set(Info.__dataclass_fields__), FENCE_ADVICE
    wrapper = inspect.getsource(GraphQLCoreConverter.from_resolver)
    assert "_raw_info=info" in wrapper and "_field=field" in wrapper, FENCE_ADVICE


def test_strawberry_still_reads_an_absent_connection_init_payload_as_empty():
    # Item 5 passes a null payload on as an absent one: that is only right while Strawberry
    # reads an absent payload as `{}` (if a release accepts null itself, drop the repair).
    source = inspect.getsource(BaseGraphQLTransportWSHandler.handle_connection_init)
    assert 'message.get("payload", {})' in source, FENCE_ADVICE


def test_the_per_event_memo_the_repair_resets_is_still_there():
    # graphql-core 3.3 shares this memo between a subscription's per-event executors; if a
    # release renames or drops it, the repair does nothing and the leak may be back.
    assert "_relevant_sub_fields" in inspect.getsource(CoreExecutor), FENCE_ADVICE


# Private names of other libraries, each fenced in the one module that needs it.
ELSEWHERE = {
    ("embedded_db.py", "_lock"),  # the embedded wheel's lock, fenced in embedded_db.py
    ("testing/graphql_ws.py", "_response"),  # aiohttp has no public abort (test client)
}


def test_no_module_outside_the_fence_uses_a_private_framework_name():
    private_uses = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and node.attr != "_replace"  # namedtuple's public API
                and (str(path.relative_to(SRC)), node.attr) not in ELSEWHERE
            ):
                private_uses.append(f"{path.relative_to(SRC)}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and any(
                part.startswith("_") and not part.startswith("__")
                for part in (node.module or "").split(".")
            ):
                private_uses.append(f"{path.relative_to(SRC)}:{node.lineno} {node.module}")
    assert private_uses == [], "private names belong in api/internals.py"


# uvicorn's fence: http_protocol.py (the HTTP limits) subclasses its httptools protocol.
UVICORN_ADVICE = (
    "uvicorn or httptools is not the version http_protocol.py was written for. Read its "
    "header, check each uvicorn name it lists against the new source, run "
    "tests/security/test_server_limits.py, then update its FENCED_VERSIONS."
)


def test_the_installed_uvicorn_is_the_one_the_http_limits_were_written_for():
    assert http_protocol.installed_versions() == http_protocol.FENCED_VERSIONS, UVICORN_ADVICE


def test_every_uvicorn_name_the_http_limits_use_still_exists():
    for method in (
        "connection_made",
        "connection_lost",
        "data_received",
        "handle_websocket_upgrade",
        "on_message_begin",
        "on_headers_complete",
        "on_message_complete",
    ):
        assert callable(getattr(HttpToolsProtocol, method, None)), (method, UVICORN_ADVICE)

    async def app(scope, receive, send):  # pragma: no cover - never called
        pass

    loop = asyncio.new_event_loop()
    try:
        protocol = HttpToolsProtocol(
            config=Config(app=app, log_config=None),
            server_state=ServerState(),
            app_state={},
            _loop=loop,
        )
    finally:
        loop.close()
    for attribute in (
        "app",
        "headers",
        "cycle",
        "pipeline",
        "flow",
        "connections",
        "loop",
        "transport",
        "scope",
    ):
        assert hasattr(protocol, attribute), (attribute, UVICORN_ADVICE)
    # The hang-up: the scope on_headers_complete hands to the request's cycle.
    assert "scope=self.scope" in inspect.getsource(HttpToolsProtocol.on_headers_complete), (
        UVICORN_ADVICE
    )
    assert "self.url = " in inspect.getsource(HttpToolsProtocol.on_message_begin), UVICORN_ADVICE
    cycle = inspect.getsource(RequestResponseCycle.__init__)
    for attribute in (
        "response_started",
        "response_complete",
        "keep_alive",
        "disconnected",
        "message_event",
    ):
        assert f"self.{attribute} = " in cycle, (attribute, UVICORN_ADVICE)
    # The server builds each connection's protocol from `http=` with these arguments only.
    startup = inspect.getsource(Server.startup)
    assert "config.http_protocol_class(" in startup, UVICORN_ADVICE
    for argument in ("config=", "server_state=", "app_state=", "_loop="):
        assert argument in startup, (argument, UVICORN_ADVICE)


@contextlib.contextmanager
def cycles_collected() -> Iterator[list[object]]:
    """What the garbage collector alone would free of what the block made: objects in
    reference cycles (or hanging off one)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[object] = []
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


@strawberry.type
class _Query:
    @strawberry.field
    async def ping(self, info: strawberry.Info) -> str:
        # A resolver that uses the executor's helpers, as graphql-core's own code does.
        await raw_info_of(info).async_helpers.gather([asyncio.sleep(0)])
        raw_info_of(info).async_helpers.track([])
        return "pong"


def raw_info_of(info: strawberry.Info) -> Any:
    return internals.raw_info(info)


def test_executing_an_operation_leaves_nothing_for_the_garbage_collector():
    # Item 9: each request's executor (and all it holds) is freed when the request ends.
    small = strawberry.Schema(query=_Query, execution_context_class=internals.Executor)

    async def run() -> None:
        for _ in range(3):
            result = await small.execute("{ ping }")
            assert result.errors is None and result.data == {"ping": "pong"}

    with cycles_collected() as garbage:
        asyncio.run(run())
    executors = [o for o in garbage if isinstance(o, CoreExecutor)]
    assert executors == [], FENCE_ADVICE

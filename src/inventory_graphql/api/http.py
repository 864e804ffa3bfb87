"""The GraphQL endpoint: POST and GET over HTTP, graphql-transport-ws over WebSocket."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.async_base_view import HTTPException
from strawberry.schema import BaseSchema
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.types.unset import UnsetType

from inventory_graphql.api.auth import Tokens, bearer, connection_token
from inventory_graphql.api.context import Context
from inventory_graphql.api.delivery import current_operation

BODY_SHAPE = "The request body must be one JSON object with a `query` (batching is off)."
STOREFRONT_REFUSAL = "This needs the storefront token: send `Authorization: Bearer <token>`."


class TransportWsHandler(BaseGraphQLTransportWSHandler[Context, None]):
    # Strawberry's handler indexes every message as a dict: a JSON array or number
    # crashes the connection (1006). Refuse it as the protocol says: close 4400.
    async def handle_message(self, message: object) -> None:
        if not isinstance(message, dict):
            await self.handle_invalid_message("Failed to parse message")
            return
        await super().handle_message(message)  # type: ignore[arg-type]

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        # The operation's own task: its resolvers can find their operation (and send
        # updates straight to the socket, see delivery.py).
        current_operation.set(operation)
        await super().run_operation(operation)


class GraphQLEndpoint(GraphQL[Context, None]):
    graphql_transport_ws_handler_class = TransportWsHandler

    def __init__(
        self, schema: BaseSchema, tokens: Tokens, live_interval_seconds: float, **options: object
    ) -> None:
        super().__init__(schema, **options)  # type: ignore[arg-type]
        self.tokens = tokens
        self.live_interval_seconds = live_interval_seconds

    def parse_json(self, data: str | bytes) -> dict[str, object]:
        # Strawberry crashes (500) on JSON that is not an object, and on invalid UTF-8.
        try:
            parsed = self.decode_json(data)
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError both are
            raise HTTPException(400, "Unable to parse request body as JSON") from error
        if not isinstance(parsed, dict):
            raise HTTPException(400, BODY_SHAPE)
        return parsed

    def decode_json(self, data: str | bytes) -> object:
        return orjson.loads(data)

    def encode_json(self, data: object) -> str:
        # Text, not bytes: Strawberry sends bytes over WebSocket as binary frames.
        return orjson.dumps(data).decode()

    async def get_context(self, request: Request | WebSocket, response: Response | None) -> Context:
        # The service lives in the app's lifespan state, not in a module global.
        state = request.state
        token = bearer(request.headers)
        if isinstance(request, Request) and not self.tokens.is_shopper(token):
            raise HTTPException(401, STOREFRONT_REFUSAL)
        return Context(
            request=request,
            response=response,
            service=state.service,
            hub=state.hub,
            metrics=state.metrics,
            renderings=state.renderings,
            live_interval_seconds=self.live_interval_seconds,
            is_admin=self.tokens.is_admin(token),
        )

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        # Browsers cannot set headers on a WebSocket: the token comes in connection_init.
        if not self.tokens.is_shopper(
            connection_token(getattr(context, "connection_params", None))
        ):
            raise ConnectionRejectionError({"reason": STOREFRONT_REFUSAL})  # closes with 4403
        return await super().on_ws_connect(context)


def graphql_endpoint(
    schema: BaseSchema,
    tokens: Tokens,
    *,
    max_subscriptions_per_connection: int,
    graphiql: bool,
    live_interval_seconds: float,
) -> GraphQLEndpoint:
    return GraphQLEndpoint(
        schema,
        tokens,
        live_interval_seconds,
        graphql_ide="graphiql" if graphiql else None,
        subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
        max_subscriptions_per_connection=max_subscriptions_per_connection,
    )

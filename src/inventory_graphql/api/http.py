"""The GraphQL endpoint: POST and GET over HTTP, graphql-transport-ws over WebSocket."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from inventory_graphql.api.context import Context
from inventory_graphql.api.schema import schema


class GraphQLEndpoint(GraphQL[Context, None]):
    async def get_context(self, request: Request | WebSocket, response: Response | None) -> Context:
        # The service lives in the app's lifespan state, not in a module global.
        state = request.state
        return Context(request=request, response=response, service=state.service, hub=state.hub)


def graphql_endpoint(max_subscriptions_per_connection: int) -> GraphQLEndpoint:
    return GraphQLEndpoint(
        schema,
        subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
        max_subscriptions_per_connection=max_subscriptions_per_connection,
    )

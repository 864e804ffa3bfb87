"""The GraphQL endpoint: POST and GET over HTTP, graphql-transport-ws over WebSocket."""

from __future__ import annotations

from typing import Any

import orjson
from cross_web import HTTPException
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.exceptions import ConnectionRejectionError
from strawberry.schema import BaseSchema
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UnsetType

from inventory_graphql.api.auth import StorefrontRequired, Tokens, bearer, connection_token
from inventory_graphql.api.buyers import TokenRefused
from inventory_graphql.api.context import Context
from inventory_graphql.api.document_cache import CachedDocument
from inventory_graphql.api.graphiql import page_html, page_response
from inventory_graphql.api.internals import (
    DirectDeliveryTransportWsHandler,
    DocumentIdView,
    GuardedTransportWsHandler,
)
from inventory_graphql.api.media_types import JSON_UTF8
from inventory_graphql.api.operations import refusal
from inventory_graphql.api.request_guards import Guards
from inventory_graphql.api.trusted_documents import DocumentRefused, Manifest, TrustedDocuments
from inventory_graphql.inventory.models import ANONYMOUS, Caller
from inventory_graphql.request_id import current_request_id
from inventory_graphql.state import app_state

BODY_SHAPE = (
    "The request body must be one JSON object with a `query` or a `documentId` (batching is off)."
)
STOREFRONT_REFUSAL = "This needs the storefront token: send `Authorization: Bearer <token>`."


class Unauthenticated(Exception):
    """A buyer token that cannot be used: answered 401 before anything is read or run."""

    def __init__(self, refused: TokenRefused) -> None:
        super().__init__(refused.message)
        self.refused = refused

    def response(self) -> Response:
        # A GraphQL error body, as other refusals at the door (RATE_LIMITED) are, and
        # RFC 6750's challenge. The token itself is never repeated.
        error = {
            "message": self.refused.message,
            "extensions": {
                "code": "UNAUTHENTICATED",
                "reason": self.refused.reason,
                "requestId": current_request_id(),
            },
        }
        return JSONResponse(
            {"data": None, "errors": [error]},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            media_type=JSON_UTF8,
        )


class GraphQLEndpoint(DocumentIdView):
    def __init__(
        self,
        schema: BaseSchema,
        tokens: Tokens,
        live_interval_seconds: float,
        *,
        direct_delivery: bool,
        trusted_documents: TrustedDocuments | None = None,
        **options: Any,
    ) -> None:
        super().__init__(schema, **options)
        self.tokens = tokens
        self.trusted_documents = trusted_documents or TrustedDocuments(Manifest())
        self.live_interval_seconds = live_interval_seconds
        self.graphql_transport_ws_handler_class = (
            DirectDeliveryTransportWsHandler if direct_delivery else GuardedTransportWsHandler
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except Unauthenticated as refused:  # from get_context: nothing was answered yet
            await refused.response()(scope, receive, send)

    def refuse_operation(
        self, query: str, operation_name: str | None, method: str, sub_response: Response
    ) -> GraphQLError | None:
        guards = getattr(self.schema, "guards", None)
        if not isinstance(guards, Guards):
            return None
        entry = guards.documents.get(query)
        if entry is None:
            # A text not seen yet is parsed for this look (with RequestGuards' token limit)
            # and again by Strawberry, within its parse span, which caches it: twice on
            # first sight only. One that does not parse is Strawberry's to word.
            try:
                entry = CachedDocument.parse(query, max_tokens=guards.limits.max_tokens)
            except GraphQLError:
                return None
        refused = refusal(entry.document, operation_name, method)
        if refused is None:
            return None
        sub_response.status_code = refused.status
        if refused.allow is not None:
            sub_response.headers["Allow"] = refused.allow
        return GraphQLError(refused.message, extensions={"requestId": current_request_id()})

    def create_response(self, response_data: Any, sub_response: Response) -> Response:
        response = super().create_response(response_data, sub_response)
        # The charset GraphQL over HTTP asks for, set where the answer is built (media_types.py
        # passes application/json answers through as they are).
        response.headers["content-type"] = JSON_UTF8
        return response

    @property
    def graphql_ide_html(self) -> str:
        # GraphiQL from the service's own files (api/graphiql.py), not from a CDN.
        return page_html()

    async def render_graphql_ide(self, request: Request) -> Response:
        return page_response()

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

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        # The service lives in the app's lifespan state, not in a module global.
        state = app_state(request)
        token = bearer(request.headers)
        caller = self.tokens.caller(token)
        if isinstance(request, Request):
            if isinstance(caller, TokenRefused):
                raise Unauthenticated(caller)
            if isinstance(caller, StorefrontRequired):
                raise HTTPException(401, STOREFRONT_REFUSAL)
        return Context(
            request=request,
            response=response if isinstance(response, Response) else None,
            service=state["service"],
            hub=state["hub"],
            metrics=state["metrics"],
            renderings=state["renderings"],
            live_interval_seconds=self.live_interval_seconds,
            is_admin=self.tokens.is_admin(token),
            # Over WebSocket the caller is decided at connection_init (on_ws_connect).
            caller=caller
            if isinstance(request, Request) and isinstance(caller, Caller)
            else ANONYMOUS,
            cost_budget=state["cost_budget"],
        )

    def admit_document(self, query: object, document_id: object, context: Context) -> str | None:
        # Over WebSocket the admin token may come in connection_init instead of a header.
        admin = context.is_admin or self.tokens.is_admin(
            connection_token(context.connection_params)
        )
        try:
            return self.trusted_documents.admit(query, document_id, admin=admin)
        except DocumentRefused as refused:
            if context.response is not None:
                context.response.status_code = refused.status
            raise refused.error(requestId=current_request_id()) from None

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        # Browsers cannot set headers on a WebSocket: the token comes in connection_init
        # (a client that can set headers may send it in the handshake's instead).
        presented = connection_token(getattr(context, "connection_params", None)) or bearer(
            context.request.headers
        )
        caller = self.tokens.caller(presented)
        if isinstance(caller, TokenRefused):
            raise ConnectionRejectionError({"reason": caller.message})  # closes with 4403
        if isinstance(caller, StorefrontRequired):
            raise ConnectionRejectionError({"reason": STOREFRONT_REFUSAL})  # closes with 4403
        context.caller = caller
        context.is_admin = context.is_admin or caller.admin
        return await super().on_ws_connect(context)


def graphql_endpoint(
    schema: BaseSchema,
    tokens: Tokens,
    *,
    max_subscriptions_per_connection: int,
    graphiql: bool,
    live_interval_seconds: float,
    direct_delivery: bool,
    trusted_documents: TrustedDocuments | None = None,
) -> GraphQLEndpoint:
    return GraphQLEndpoint(
        schema,
        tokens,
        live_interval_seconds,
        direct_delivery=direct_delivery,
        trusted_documents=trusted_documents,
        graphql_ide="graphiql" if graphiql else None,
        subscription_protocols=[GRAPHQL_TRANSPORT_WS_PROTOCOL],
        max_subscriptions_per_connection=max_subscriptions_per_connection,
    )

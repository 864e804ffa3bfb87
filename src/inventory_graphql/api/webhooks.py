"""Webhooks over GraphQL: createWebhook, deleteWebhook and webhooks (admin only). Composed
into the schema's root types in schema.py; delivery is webhooks/delivery.py's."""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, TypeVar, assert_never, cast

import strawberry
from strawberry import UNSET

from inventory_graphql.api import fields
from inventory_graphql.api.auth import IsAdmin
from inventory_graphql.api.context import Context
from inventory_graphql.api.outcomes import InvalidInput, Problem
from inventory_graphql.api.stock_events import StockEventKind
from inventory_graphql.state import app_state
from inventory_graphql.webhooks import service, store
from inventory_graphql.webhooks.service import WebhookService

Info = strawberry.Info[Context, None]
Resolver = TypeVar("Resolver", bound=Callable[..., Any])

FAILURES_SHOWN = 20  # migration 010 keeps an endpoint's last 20 failures
# What the webhooks query is priced for (api/query_cost.py): the default endpoint limit
# (INVENTORY_WEBHOOK_MAX_ENDPOINTS; admin only, so an operator who raises it is trusted).
PRICED_ENDPOINTS = 20


@strawberry.enum(description="Whether an endpoint's deliveries get through.")
class WebhookStatus(enum.Enum):
    ACTIVE = strawberry.enum_value("ACTIVE", description="Delivering (or retrying briefly).")
    FAILING = strawberry.enum_value(
        "FAILING",
        description="Its message has failed for longer than INVENTORY_WEBHOOK_MAX_AGE_SECONDS; "
        "still retried every INVENTORY_WEBHOOK_RETRY_MAX_SECONDS, ACTIVE again on success.",
    )
    DISABLED = strawberry.enum_value(
        "DISABLED",
        description="Nothing more is sent (it answered 410 Gone, say): see disabledReason.",
    )


@strawberry.type(description="A failed delivery attempt.")
class WebhookFailure:
    at: datetime
    webhook_id: str = strawberry.field(description="The message's webhook-id header.")
    attempt: int = strawberry.field(description="Its attempt number (1 up).")
    status_code: int | None = strawberry.field(description="The HTTP status; null: no answer.")
    error: str


@strawberry.type(description="An endpoint that receives stock events, with its delivery state.")
class Webhook:
    id: strawberry.ID
    url: str
    kinds: list[StockEventKind] | None = strawberry.field(
        description="The kinds of events it receives; null: every kind."
    )
    status: WebhookStatus
    created_at: datetime
    created_by: str | None = strawberry.field(description="The admin token's name.")
    cursor: str = strawberry.field(
        description="The feed cursor of the last event it acknowledged (or passed over)."
    )
    lag: int = strawberry.field(
        description="Events of its kinds in the feed after its cursor, counted up to 1,000."
    )
    delivered_events: int = strawberry.field(description="Events acknowledged so far.")
    last_success_at: datetime | None
    pending_webhook_id: str | None = strawberry.field(
        description="The webhook-id of the message being delivered (the same on every retry)."
    )
    pending_events: int | None
    attempts: int = strawberry.field(description="Failed attempts of the pending message.")
    first_failure_at: datetime | None
    next_attempt_at: datetime | None
    disabled_reason: str | None
    recent_failures: list[WebhookFailure] = strawberry.field(
        description="Its last failed attempts (at most 20), newest first."
    )

    @classmethod
    def from_domain(cls, endpoint: store.Endpoint) -> Webhook:
        return cls(
            id=strawberry.ID(str(endpoint.id)),
            url=endpoint.url,
            kinds=None if endpoint.kinds is None else [StockEventKind(k) for k in endpoint.kinds],
            status=WebhookStatus(endpoint.status),
            created_at=endpoint.created_at,
            created_by=endpoint.created_by,
            cursor=str(endpoint.cursor),
            lag=endpoint.lag,
            delivered_events=endpoint.delivered_events,
            last_success_at=endpoint.last_success_at,
            pending_webhook_id=endpoint.message_id,
            pending_events=endpoint.message_events,
            attempts=endpoint.attempts,
            first_failure_at=endpoint.first_failure_at,
            next_attempt_at=endpoint.next_attempt_at,
            disabled_reason=endpoint.disabled_reason,
            recent_failures=[
                WebhookFailure(
                    at=f.at,
                    webhook_id=f.webhook_id,
                    attempt=f.attempt,
                    status_code=f.status_code,
                    error=f.error,
                )
                for f in endpoint.failures
            ],
        )


@strawberry.type(description="A new endpoint and its signing secret, shown this once.")
class CreatedWebhook:
    webhook: Webhook
    secret: str = strawberry.field(
        description="The Standard Webhooks signing secret (whsec_<base64>): verify "
        "webhook-signature with it. It is never shown again."
    )


@strawberry.type
class WebhookNotFound(Problem):
    id: strawberry.ID


@strawberry.type(
    description="The URL's destination is not allowed: not in INVENTORY_WEBHOOK_ALLOWED_HOSTS, "
    "or (without that list) an address that is not public."
)
class DestinationNotAllowed(Problem):
    url: str
    reason: str


@strawberry.type(description="INVENTORY_WEBHOOK_MAX_ENDPOINTS endpoints exist already.")
class WebhookLimitReached(Problem):
    limit: int


WebhookResult = Annotated[
    CreatedWebhook
    | Webhook
    | InvalidInput
    | WebhookNotFound
    | DestinationNotAllowed
    | WebhookLimitReached,
    strawberry.union("WebhookResult"),
]


def create_result(outcome: service.CreateOutcome) -> WebhookResult:
    match outcome:
        case service.Created():
            return CreatedWebhook(
                webhook=Webhook.from_domain(outcome.endpoint), secret=outcome.secret
            )
        case service.Invalid():
            return InvalidInput(message=outcome.message, field=outcome.field)
        case service.NotAllowed():
            return DestinationNotAllowed(
                message=outcome.message, url=outcome.url, reason=outcome.reason
            )
        case service.LimitReached():
            return WebhookLimitReached(message=outcome.message, limit=outcome.limit)
        case _:
            assert_never(outcome)


def delete_result(outcome: service.DeleteOutcome) -> WebhookResult:
    match outcome:
        case store.Endpoint():
            return Webhook.from_domain(outcome)
        case service.NotFound():
            return WebhookNotFound(message=outcome.message, id=strawberry.ID(outcome.id))
        case _:
            assert_never(outcome)


def _admin_field(*, description: str) -> Callable[[Resolver], Resolver]:
    return cast(
        Callable[[Resolver], Resolver],
        strawberry.field(description=description, permission_classes=[IsAdmin]),
    )


def _webhooks(info: Info) -> WebhookService:
    return app_state(info.context.request)["webhooks"]


@strawberry.type
class WebhooksQuery:
    @_admin_field(description="Every webhook endpoint with its delivery state. Admin only.")
    async def webhooks(self, info: Info) -> list[Webhook]:
        return [Webhook.from_domain(e) for e in await _webhooks(info).endpoints()]


@strawberry.type
class WebhooksMutation:
    @fields.mutation(
        description="Send stock events (of these kinds; null: all) to `url`, from the "
        "feed's current end: Standard Webhooks requests, signed with the secret this "
        "answers once. Admin only.",
        permission_classes=[IsAdmin],
    )
    async def create_webhook(
        self, info: Info, url: str, kinds: list[StockEventKind] | None = UNSET
    ) -> WebhookResult:
        given = None if kinds is UNSET or kinds is None else [k.value for k in kinds]
        actor = info.context.caller.actor  # the admin token's name
        return create_result(await _webhooks(info).create(url, given, actor))

    @fields.mutation(
        description="Stop and remove an endpoint; answers it as it was. Admin only.",
        permission_classes=[IsAdmin],
    )
    async def delete_webhook(self, info: Info, id: strawberry.ID) -> WebhookResult:
        return delete_result(await _webhooks(info).delete(id))

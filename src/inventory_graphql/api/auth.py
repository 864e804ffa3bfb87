"""Who may do what: admin mutations need the admin token; with a storefront token set,
everything else needs it (or the admin token, or a buyer token); a buyer token names the
buyer whose holds a caller acts on."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import strawberry
from strawberry.permission import BasePermission

from inventory_graphql.api.buyers import BuyerTokens, TokenRefused
from inventory_graphql.inventory.models import ANONYMOUS, Caller


@dataclass(frozen=True)
class StorefrontRequired:
    """INVENTORY_STOREFRONT_TOKEN is set and the caller brought none of the tokens."""


@dataclass(frozen=True)
class Tokens:
    admin: str
    storefront: str | None = None
    buyers: BuyerTokens | None = None  # None: INVENTORY_BUYER_TOKEN_SECRET unset
    named_admins: tuple[tuple[str, str], ...] = ()  # INVENTORY_ADMIN_TOKENS: (name, token)

    def admin_name(self, presented: str | None) -> str | None:
        """The name of the admin token presented (INVENTORY_ADMIN_TOKEN's is "admin"), or
        None. Every token is compared, each in constant time: how long it takes does not
        tell which one matched, nor how much of one."""
        found = None
        for name, token in (("admin", self.admin), *self.named_admins):
            if matches(presented, token) and found is None:
                found = name
        return found

    def is_admin(self, presented: str | None) -> bool:
        return self.admin_name(presented) is not None

    def is_shopper(self, presented: str | None) -> bool:
        if self.storefront is None or self.is_admin(presented):
            return True
        return matches(presented, self.storefront)

    def caller(self, presented: str | None) -> Caller | TokenRefused | StorefrontRequired:
        """Who the bearer of `presented` is. With a buyer secret set, any bearer token
        but the admin and storefront ones is a buyer token and must verify: a client
        that means to be a buyer is never served as someone else."""
        if (name := self.admin_name(presented)) is not None:
            return Caller(admin=True, actor=name)
        if self.storefront is not None and matches(presented, self.storefront):
            return ANONYMOUS
        if self.buyers is not None and presented is not None:
            buyer = self.buyers.verify(presented)
            # The shop's backend minted it: it is as good as the storefront token.
            return buyer if isinstance(buyer, TokenRefused) else Caller(buyer=buyer)
        return ANONYMOUS if self.storefront is None else StorefrontRequired()


def matches(presented: str | None, token: str) -> bool:
    """Whether the presented token is this one (in constant time)."""
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())


def bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def connection_token(params: Any) -> str | None:
    """The token in a WebSocket's connection_init payload: {"authorization": "Bearer …"}."""
    if not isinstance(params, dict):
        return None
    value = params.get("authorization") or params.get("Authorization")
    return bearer({"authorization": value}) if isinstance(value, str) else None


class IsAdmin(BasePermission):
    message = (
        "This needs the admin token: send `Authorization: Bearer <INVENTORY_ADMIN_TOKEN>` "
        '(over WebSocket: `{"authorization": "Bearer <INVENTORY_ADMIN_TOKEN>"}` as '
        "connection_init's payload)."
    )
    error_extensions = {"code": "FORBIDDEN"}  # noqa: RUF012 (Strawberry's declared shape)

    def has_permission(self, source: Any, info: strawberry.Info, **kwargs: Any) -> bool:
        return bool(info.context.is_admin)

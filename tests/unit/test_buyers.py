"""Buyer tokens: what verifies, what is refused and why, and who a bearer token makes the
caller (the real-server answers are in tests/security/test_buyers.py)."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from inventory_graphql.api.auth import StorefrontRequired, Tokens
from inventory_graphql.api.buyers import BuyerTokens, TokenRefused
from inventory_graphql.config import ConfigError, Settings
from inventory_graphql.inventory.models import ADMIN, ANONYMOUS, Caller

SECRET = "buyer-token-secret-" + "s" * 45  # 64 bytes: HS512 (forged below) warns if shorter
TOKENS = BuyerTokens(SECRET)


def signed(claims: dict[str, object], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def later(seconds: int = 600) -> int:
    return int(time.time()) + seconds


def unsigned(claims: dict[str, object]) -> str:
    """An `alg: none` token: a header, the claims and an empty signature."""

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def test_a_minted_token_names_its_buyer():
    token = TOKENS.mint("buyer-7", ttl_seconds=60)
    assert TOKENS.verify(token) == "buyer-7"
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert 59 <= claims["exp"] - time.time() <= 60


def test_any_well_signed_token_with_sub_and_exp_verifies():
    # The shop's backend mints them with its own library: only sub and exp are needed.
    assert TOKENS.verify(signed({"sub": "über-kunde 42", "exp": later()})) == "über-kunde 42"


@pytest.mark.parametrize(
    ("token", "reason", "says"),
    [
        (signed({"sub": "b", "exp": later(-60)}), "EXPIRED", "expired"),
        (signed({"sub": "b", "exp": later()}, key="x" * 40), "INVALID", "signature"),
        (unsigned({"sub": "b", "exp": later()}), "INVALID", "HS256"),
        (signed({"sub": "b", "exp": later()}, algorithm="HS512"), "INVALID", "HS256"),
        (signed({"sub": "b"}), "INVALID", "`exp`"),
        (signed({"exp": later()}), "INVALID", "`sub`"),
        (signed({"sub": "", "exp": later()}), "INVALID", "1 to 255"),
        (signed({"sub": "b" * 256, "exp": later()}), "INVALID", "1 to 255"),
        (signed({"sub": "a\nb", "exp": later()}), "INVALID", "control"),
        (signed({"sub": "b", "exp": later(), "nbf": later()}), "INVALID", "not valid yet"),
        ("not-a-jwt", "INVALID", "well-formed"),
        ("a.b.c", "INVALID", "well-formed"),
    ],
    ids=[
        "expired",
        "forged",
        "alg none",
        "other alg",
        "no exp",
        "no sub",
        "empty sub",
        "long sub",
        "control sub",
        "not yet",
        "garbage",
        "three parts",
    ],
)
def test_unusable_tokens_are_refused_saying_why(token, reason, says):
    refused = TOKENS.verify(token)
    assert isinstance(refused, TokenRefused)
    assert refused.reason == reason
    assert says in refused.message
    assert token not in refused.message


def test_who_a_bearer_token_makes_the_caller():
    buyer = TOKENS.mint("b1")
    tokens = Tokens(admin="admin-token", buyers=TOKENS)
    assert tokens.caller("admin-token") == ADMIN
    assert tokens.caller(None) == ANONYMOUS
    assert tokens.caller(buyer) == Caller(buyer="b1")
    # With the secret set, any other bearer token means to be a buyer's: it must verify.
    assert isinstance(tokens.caller("wrong"), TokenRefused)


def test_without_the_secret_everyone_is_anonymous_as_before():
    tokens = Tokens(admin="admin-token")
    assert tokens.caller(TOKENS.mint("b1")) == ANONYMOUS
    assert tokens.caller("wrong") == ANONYMOUS
    assert tokens.caller("admin-token") == ADMIN


def test_a_buyer_token_is_a_storefront_credential():
    tokens = Tokens(admin="admin-token", storefront="shop-key", buyers=TOKENS)
    assert tokens.caller(TOKENS.mint("b1")) == Caller(buyer="b1")
    assert tokens.caller("shop-key") == ANONYMOUS
    assert tokens.caller(None) == StorefrontRequired()
    assert isinstance(tokens.caller("wrong"), TokenRefused)
    assert Tokens(admin="a", storefront="shop-key").caller("wrong") == StorefrontRequired()


def test_a_short_secret_is_refused_at_start_without_repeating_it():
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"INVENTORY_BUYER_TOKEN_SECRET": "too-short-secret"})
    assert "INVENTORY_BUYER_TOKEN_SECRET is not valid: expected at least 32 bytes" in str(
        refused.value
    )
    assert "too-short-secret" not in str(refused.value)
    assert Settings.from_env({"INVENTORY_BUYER_TOKEN_SECRET": SECRET}).buyer_token_secret == SECRET


def test_mint_refuses_what_verify_would():
    with pytest.raises(ValueError, match="1 to 255"):
        TOKENS.mint("")
    with pytest.raises(ValueError, match="at least 1 second"):
        TOKENS.mint("b", ttl_seconds=0)

"""Buyer tokens: what verifies, what is refused and why, and who a bearer token makes the
caller (the real-server answers are in tests/security/test_buyers.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inventory_graphql.api.auth import StorefrontRequired, Tokens
from inventory_graphql.api.buyers import BuyerTokens, TokenRefused, check_buyer_id
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
    ("make_token", "reason", "says"),
    [
        (lambda: signed({"sub": "b", "exp": later(-60)}), "EXPIRED", "expired"),
        (lambda: signed({"sub": "b", "exp": later()}, key="x" * 40), "INVALID", "signature"),
        (lambda: unsigned({"sub": "b", "exp": later()}), "INVALID", "HS256"),
        (lambda: signed({"sub": "b", "exp": later()}, algorithm="HS512"), "INVALID", "HS256"),
        (lambda: signed({"sub": "b"}), "INVALID", "`exp`"),
        (lambda: signed({"exp": later()}), "INVALID", "`sub`"),
        (lambda: signed({"sub": "", "exp": later()}), "INVALID", "1 to 255"),
        (lambda: signed({"sub": "b" * 256, "exp": later()}), "INVALID", "1 to 255"),
        (lambda: signed({"sub": "a\nb", "exp": later()}), "INVALID", "control"),
        (lambda: signed({"sub": "b", "exp": later(), "nbf": later()}), "INVALID", "not valid yet"),
        (lambda: "not-a-jwt", "INVALID", "well-formed"),
        (lambda: "a.b.c", "INVALID", "well-formed"),
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
def test_unusable_tokens_are_refused_saying_why(make_token, reason, says):
    # Made when the test runs, not when it is collected: dates are relative to now.
    token = make_token()
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


# ---------------------------------------------------------------- held to PyJWT
# BuyerTokens.verify checks tokens itself (PyJWT's general decode cost a twentieth of a
# reservation): here it is held to what `jwt.decode` says of the same tokens.


def pyjwt_verify(token: str) -> str | TokenRefused:
    """What PyJWT makes of a token, with the service's options (the reference)."""
    try:
        claims = jwt.decode(
            token, SECRET, algorithms=["HS256"], options={"require": ["exp", "sub"]}, leeway=5
        )
    except jwt.ExpiredSignatureError:
        return TokenRefused("EXPIRED", "it has expired")
    except jwt.InvalidSignatureError:
        return TokenRefused("INVALID", "its signature does not verify")
    except jwt.InvalidAlgorithmError:
        return TokenRefused("INVALID", "it must be signed with HS256")
    except jwt.MissingRequiredClaimError as missing:
        return TokenRefused("INVALID", f"it has no `{missing.claim}` claim")
    except jwt.ImmatureSignatureError:
        return TokenRefused("INVALID", "it is not valid yet (`nbf` or `iat` in the future)")
    except jwt.InvalidTokenError:
        return TokenRefused("INVALID", "it is not a well-formed JWT")
    buyer = claims["sub"]
    problem = check_buyer_id(buyer)
    return TokenRefused("INVALID", problem) if problem else buyer


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, object], claims: dict[str, object], key: str = SECRET) -> str:
    """A compact JWS as any minter makes it (signed with HMAC when alg is HS*)."""
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    alg = header.get("alg")
    mac = hmac.new(key.encode(), signing.encode(), digest[alg]).digest() if alg in digest else b""
    return f"{signing}.{b64(mac)}"


ABSENT = object()
NOW = int(time.time())  # dates are minutes from the leeway's edges: no flaky boundary
GOOD_HEADER: dict[str, object] = {"alg": "HS256", "typ": "JWT"}
GOOD_CLAIMS: dict[str, object] = {"sub": "buyer-1", "iat": NOW - 60, "exp": NOW + 600}
JUNK_DATES: list[object] = [None, "x", [NOW], {}]
# What each part of a token may be instead of what a shop mints (ABSENT: left out).
FAULTS: dict[str, list[object]] = {
    "alg": ["HS512", "HS384", "none", "hs256", "", None, ABSENT],
    "typ": ["at+jwt", ABSENT],
    "kid": ["k1", 5, None],
    "sub": ["über 42", "", "b" * 256, "a\nb", "\u200b", "x\x7f", 7, None, ABSENT],
    "exp": [NOW - 3600, NOW - 60, float(NOW + 900), *JUNK_DATES, ABSENT],
    "iat": [NOW + 60, NOW + 3600, float(NOW - 10), *JUNK_DATES, ABSENT],
    "nbf": [NOW - 60, NOW + 60, NOW + 3600, *JUNK_DATES],
    "aud": ["", "shop", ["shop"], []],
    "jti": ["j-1", 9, None],
}


@st.composite
def tokens(draw: st.DrawFn) -> str:
    """A token as a shop mints it, with a few of its parts changed (one, mostly), signed
    with the secret or not, then perhaps damaged in transit."""
    header, claims = dict(GOOD_HEADER), dict(GOOD_CLAIMS)
    for name in draw(st.lists(st.sampled_from(sorted(FAULTS)), max_size=3)):
        part = header if name in ("alg", "typ", "kid") else claims
        part[name] = draw(st.sampled_from(FAULTS[name]))
        if part[name] is ABSENT:
            del part[name]
    token = compact(header, claims, key=draw(st.sampled_from([SECRET] * 5 + ["x" * 40])))
    how = draw(st.sampled_from(["as minted"] * 10 + ["flip", "cut", "add", "dots", "junk"]))
    if how == "as minted":
        return token
    at = draw(st.integers(0, len(token) - 1))
    if how == "flip":
        return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]
    if how == "cut":
        return token[:at]
    if how == "add":
        return token[:at] + draw(st.sampled_from(["A", ".", "=", "!", "é"])) + token[at:]
    if how == "dots":
        return token + "." + token.rsplit(".", 1)[-1]
    return draw(st.text(max_size=40))


def strict_only(token: str) -> bool:
    """Tokens this service refuses where PyJWT is lenient (see BuyerTokens.verify):
    NumericDates that are not JSON numbers."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return False
    return any(isinstance(claims.get(n), str | bool) for n in ("exp", "iat", "nbf"))


@settings(max_examples=1500, deadline=None)
@given(tokens())
def test_verify_says_of_every_token_what_pyjwt_says(token):
    ours, reference = TOKENS.verify(token), pyjwt_verify(token)
    if strict_only(token) and isinstance(ours, TokenRefused):
        assert ours.reason == "INVALID"
        return
    # The same buyer, or refused for the same reason; the detail may differ only among
    # INVALID ones, where PyJWT's order of checks is not the point (said "malformed" or not).
    if isinstance(reference, TokenRefused) and isinstance(ours, TokenRefused):
        assert ours.reason == reference.reason, (ours, reference)
    else:
        assert ours == reference


def test_verify_is_stricter_than_pyjwt_only_where_minters_never_go():
    # Padded segments (as some issuers send, signed as sent).
    header, claims, _ = TOKENS.mint("b1").split(".")
    signing = f"{header}.{claims}{'=' * (-len(claims) % 4)}"
    mac = hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest()
    padded = f"{signing}.{b64(mac)}"
    assert "=" in padded and pyjwt_verify(padded) == "b1"
    assert TOKENS.verify(padded) == TokenRefused("INVALID", "it is not a well-formed JWT")
    as_string = compact({"alg": "HS256"}, {"sub": "b1", "exp": str(later())})
    assert pyjwt_verify(as_string) == "b1"
    assert TOKENS.verify(as_string) == TokenRefused("INVALID", "it is not a well-formed JWT")

"""Buyer tokens: HS256 JWTs that the shop's backend mints with the shared secret
INVENTORY_BUYER_TOKEN_SECRET; `sub` names the buyer, `exp` is required.

The service keeps no sessions and no list of buyers: a token that verifies is the buyer
it names, until it expires. Tokens are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import jwt
import orjson

ALGORITHM = "HS256"  # pinned: a token naming any other algorithm (or none) is refused
MAX_BUYER_ID = 255
DEFAULT_TTL_SECONDS = 3600
# Clock drift allowed between the shop's backend and this service when checking `exp`.
LEEWAY_SECONDS = 5
# Far above any buyer token (~200 bytes); bounds what a refused one can cost.
MAX_TOKEN_BYTES = 4096
# Compact JWS: header.payload.signature, unpadded base64url; HS256's MAC is 32 bytes (43
# characters).
_COMPACT_HS256 = re.compile(rb"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class TokenRefused:
    """A buyer token that cannot be used; the request is answered 401 and nothing runs."""

    reason: Literal["EXPIRED", "INVALID"]
    detail: str

    @property
    def message(self) -> str:
        if self.reason == "EXPIRED":
            return "The buyer token has expired: get a new one from the shop."
        return f"The buyer token is invalid: {self.detail}."


MALFORMED = TokenRefused("INVALID", "it is not a well-formed JWT")
FORGED = TokenRefused("INVALID", "its signature does not verify")
OTHER_ALGORITHM = TokenRefused("INVALID", f"it must be signed with {ALGORITHM}")
EXPIRED = TokenRefused("EXPIRED", "it has expired")
NOT_YET = TokenRefused("INVALID", "it is not valid yet (`nbf` or `iat` in the future)")


def check_buyer_id(buyer: object) -> str | None:
    """Why `buyer` cannot be a buyer id (1-255 characters, no control characters)."""
    if not isinstance(buyer, str) or not 1 <= len(buyer) <= MAX_BUYER_ID:
        return f"the buyer id must be 1 to {MAX_BUYER_ID} characters"
    # Cc (NUL, newlines, escapes) and Cf/Cs/Co/Cn: nothing a log line or a key should carry.
    # For ASCII, "printable" is exactly "not Cc" (and the rest cannot occur): no walk.
    if buyer.isascii():
        if not buyer.isprintable():
            return "the buyer id must not contain control characters"
    elif any(unicodedata.category(c).startswith("C") for c in buyer):
        return "the buyer id must not contain control characters"
    return None


class BuyerTokens:
    """Mints (with PyJWT) and verifies buyer tokens with one secret."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def mint(self, buyer: str, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> str:
        if problem := check_buyer_id(buyer):
            raise ValueError(problem)
        if ttl_seconds < 1:
            raise ValueError("the ttl must be at least 1 second")
        now = int(time.time())
        claims = {"sub": buyer, "iat": now, "exp": now + ttl_seconds}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> str | TokenRefused:
        """The buyer the token names, or why it is refused.

        Checked here rather than with `jwt.decode`: in a drop every request is another
        buyer's, and PyJWT's general decode (a per-character alphabet scan and a
        decode/encode round trip of every segment, a DER probe of the key on every call,
        stdlib JSON) cost ~50 us a token, a twentieth of a reservation's server CPU. This
        one checks the MAC over the raw bytes before it parses anything, then the header
        and the claims as PyJWT does; tests/unit/test_buyers.py holds it to PyJWT's
        decode on generated tokens. It is stricter only where conforming minters never
        go: padded segments, and NumericDates sent as strings or beyond 64 bits.
        """
        raw = token.encode("utf-8", "replace")
        match = _COMPACT_HS256.fullmatch(raw) if len(raw) <= MAX_TOKEN_BYTES else None
        if match is None:
            return _refusal_before_mac(raw) or MALFORMED
        header_part, payload_part, signature = match.groups()
        mac = hmac.digest(self._key, raw[: match.end(2)], hashlib.sha256)
        if not hmac.compare_digest(base64.urlsafe_b64encode(mac)[:43], signature):
            return _refusal_before_mac(raw) or FORGED
        header, claims = _json(header_part), _json(payload_part)
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return MALFORMED
        if header.get("alg") != ALGORITHM:
            return OTHER_ALGORITHM
        if "crit" in header or "b64" in header or not isinstance(header.get("kid", ""), str):
            return MALFORMED  # extensions this service does not implement (PyJWT: same)
        return _claims(claims)


def _refusal_before_mac(raw: bytes) -> TokenRefused | None:
    """A refusal that PyJWT gives before checking the MAC: a header that is not a JSON
    object (MALFORMED), or one naming another algorithm, so the shop learns what to fix."""
    if len(raw) > MAX_TOKEN_BYTES or raw.count(b".") != 2:
        return MALFORMED
    header = _json(raw.partition(b".")[0])
    if not isinstance(header, dict):
        return MALFORMED
    return OTHER_ALGORITHM if header.get("alg") != ALGORITHM else None


def _claims(claims: dict[str, Any]) -> str | TokenRefused:
    """The registered claims checked as PyJWT checks them (required exp and sub; iat, nbf
    and exp as NumericDates with the leeway; no aud; sub and jti strings), in its order."""
    for required in ("exp", "sub"):
        if claims.get(required) is None:
            return TokenRefused("INVALID", f"it has no `{required}` claim")
    now = time.time()
    for name in ("iat", "nbf", "exp"):
        if name not in claims:
            continue
        value = claims[name]
        if not isinstance(value, int | float) or isinstance(value, bool):
            return MALFORMED
        if name == "exp" and int(value) <= now - LEEWAY_SECONDS:
            return EXPIRED
        if name != "exp" and int(value) > now + LEEWAY_SECONDS:
            return NOT_YET
    if claims.get("aud") or not isinstance(claims.get("jti", ""), str):
        return MALFORMED
    buyer = claims["sub"]
    if not isinstance(buyer, str):
        return MALFORMED
    if problem := check_buyer_id(buyer):
        return TokenRefused("INVALID", problem)
    return buyer


def _json(part: bytes) -> object:
    """A base64url JSON segment decoded, or None when it is not one."""
    try:
        return orjson.loads(base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        return None

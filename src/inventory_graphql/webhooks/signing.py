"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A message is signed over "{webhook-id}.{webhook-timestamp}.{body}" with HMAC-SHA256 and
the endpoint's secret; the `webhook-signature` header is "v1," and the MAC in base64.
Secrets are shown as "whsec_" and their base64, as the specification's libraries take them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the specification asks for 24 to 64 random bytes


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def show_secret(secret: bytes) -> str:
    """The secret as receivers configure it: whsec_<base64>."""
    return SECRET_PREFIX + base64.b64encode(secret).decode()


def read_secret(shown: str) -> bytes:
    """The secret's bytes from its whsec_ form (or bare base64)."""
    return base64.b64decode(shown.removeprefix(SECRET_PREFIX), validate=True)


def signature(secret: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header's value for this message."""
    signed = b"%s.%d.%s" % (webhook_id.encode(), timestamp, body)
    mac = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: bytes, webhook_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """Whether any v1 signature in `header` (space-separated) signs this message."""
    expected = signature(secret, webhook_id, timestamp, body)
    return any(hmac.compare_digest(expected, given) for given in header.split(" "))


def message_id(endpoint: int, first: str, last: str) -> str:
    """The webhook-id of an endpoint's message from feed cursor `first` to `last`: the
    same for every retry and for any process that takes the endpoint over."""
    digest = hashlib.sha256(f"{endpoint}:{first}:{last}".encode()).digest()[:18]
    return "msg_" + base64.urlsafe_b64encode(digest).decode()

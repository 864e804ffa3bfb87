"""Signatures as Standard Webhooks defines them, checked against the specification's own
test vector (standard-webhooks/standard-webhooks, libraries/python/tests)."""

from __future__ import annotations

import base64

from inventory_graphql.webhooks import signing
from tests.webhooks.receiver import verified

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_reference_vector_is_signed_as_the_specification_signs_it() -> None:
    secret = signing.read_secret(VECTOR_SECRET)
    assert signing.signature(secret, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    assert signing.verify(secret, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY, VECTOR_SIGNATURE)
    # Any change to what is signed breaks it.
    assert not signing.verify(
        secret, VECTOR_ID, VECTOR_TIMESTAMP + 1, VECTOR_BODY, VECTOR_SIGNATURE
    )
    assert not signing.verify(secret, VECTOR_ID, VECTOR_TIMESTAMP, b"{}", VECTOR_SIGNATURE)


def test_a_new_secret_is_shown_in_whsec_form_and_reads_back() -> None:
    secret = signing.new_secret()
    shown = signing.show_secret(secret)
    assert shown.startswith("whsec_")
    assert len(base64.b64decode(shown.removeprefix("whsec_"))) == 32
    assert signing.read_secret(shown) == secret
    assert signing.new_secret() != secret


def test_the_test_receiver_verifies_what_the_service_signs() -> None:
    """The receiver's own check (used by the delivery tests) agrees with the signer."""
    import time

    secret = signing.new_secret()
    stamp = int(time.time())
    body = b'{"type": "stock.events"}'
    headers = {
        "webhook-id": "msg_x",
        "webhook-timestamp": str(stamp),
        "webhook-signature": signing.signature(secret, "msg_x", stamp, body),
    }
    assert verified(signing.show_secret(secret), headers, body)
    assert not verified(signing.show_secret(signing.new_secret()), headers, body)
    assert not verified(signing.show_secret(secret), headers, body + b" ")


def test_a_message_id_is_the_same_for_the_same_message_only() -> None:
    first = signing.message_id(7, "100.5", "101.9")
    assert first == signing.message_id(7, "100.5", "101.9")
    assert first.startswith("msg_")
    others = {
        signing.message_id(8, "100.5", "101.9"),
        signing.message_id(7, "100.6", "101.9"),
        signing.message_id(7, "100.5", "101.10"),
    }
    assert first not in others and len(others) == 3

"""Signatures checked by an independent verifier: the standardwebhooks package."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from pipeline.errors import ConfigError
from pipeline.notify import secret_key, signed_headers

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
BODY = b'{"event":"request.completed","request_id":"abc","status":"completed"}'


def headers(secret: str = SECRET, *, at: float | None = None, body: bytes = BODY) -> dict:
    return signed_headers(secret_key(secret), "msg_abc", int(at or time.time()), body)


@pytest.mark.parametrize("secret", [SECRET, SECRET.removeprefix("whsec_")])
def test_receivers_library_accepts_our_signature(secret):
    verified = Webhook(SECRET).verify(BODY, headers(secret))
    assert verified["request_id"] == "abc"


def test_forged_and_tampered_deliveries_fail():
    other = "whsec_" + base64.b64encode(b"another secret, 32 bytes long!!!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, headers(other))
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY.replace(b"completed", b"failed"), headers())


def test_replayed_delivery_fails():
    old = headers(at=time.time() - 6 * 60)  # the spec's tolerance is 5 minutes
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, old)


def test_unsigned_when_no_secret_but_id_and_timestamp_sent():
    sent = signed_headers(None, "msg_abc", 1_700_000_000, BODY)
    assert sent["webhook-id"] == "msg_abc" and "webhook-signature" not in sent


@pytest.mark.parametrize("bad", ["not base64!", "whsec_c2hvcnQ="])
def test_bad_secrets_are_refused_at_start(bad):
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        secret_key(bad)

"""Signatures checked by an independent verifier (the standardwebhooks package), and
how one attempt's answer is classified (through a hand-written fake pool)."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from email.utils import formatdate
from typing import cast

import pytest
import urllib3
from standardwebhooks import Webhook, WebhookVerificationError

from pipeline.errors import ConfigError
from pipeline.notify import MAX_RETRY_AFTER, WebhookSender, secret_key, signed_headers

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


class FakeResponse:
    def __init__(self, status: int, headers: dict[str, str]):
        self.status = status
        self.headers = headers

    def close(self) -> None:  # the sender never reads a receiver's body
        pass


class FakePool:
    """Answers every request with one scripted response and keeps what was sent."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None):
        self.answer = FakeResponse(status, headers or {})
        self.sent: list[dict] = []

    def request(self, method, url, **kw):
        self.sent.append({"method": method, "url": url, **kw})
        return self.answer


NOW = 1_700_000_000.0


def send(status: int, headers: dict[str, str] | None = None):
    pool = FakePool(status, headers)
    # A stand-in for the pool: the sender only calls its request().
    sender = WebhookSender(secret=SECRET, pool=cast(urllib3.PoolManager, pool), clock=lambda: NOW)
    return sender.send("https://hooks.example/in", "msg_abc", BODY), pool


def test_the_request_sent_is_signed_and_never_follows_redirects():
    attempt, pool = send(200)
    assert attempt.outcome == "delivered" and attempt.status_code == 200
    [sent] = pool.sent
    assert sent["method"] == "POST" and sent["body"] == BODY and sent["redirect"] is False
    assert sent["headers"]["webhook-timestamp"] == str(int(NOW))
    wh = Webhook(SECRET)
    expected = wh.sign("msg_abc", datetime.fromtimestamp(NOW, UTC), BODY.decode())
    assert sent["headers"]["webhook-signature"] == expected


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (500, "retry"),
        (503, "retry"),
        (429, "retry"),
        (301, "give_up"),
        (308, "give_up"),
        (400, "give_up"),
        (404, "give_up"),
        (410, "give_up"),
    ],
)
def test_answers_are_retried_or_given_up(status, outcome):
    attempt, _ = send(status)
    assert attempt.outcome == outcome and f"HTTP {status}" in attempt.error


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (formatdate(NOW + 90, usegmt=True), 90.0),  # an HTTP date
        (formatdate(NOW - 90, usegmt=True), 0.0),  # already past: no extra wait
        ("999999", MAX_RETRY_AFTER),  # capped
        ("soon", None),  # unreadable: the schedule decides
        ("-5", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date_and_capped(value, seconds):
    attempt, _ = send(503, {"Retry-After": value})
    assert attempt.outcome == "retry" and attempt.retry_after == seconds

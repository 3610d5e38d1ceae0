"""Webhooks receivers can trust: the event, its Standard Webhooks signature, one attempt.

The payload is built by a pure function. Each attempt POSTs the same body
with `webhook-id` (stable across retries, so receivers can deduplicate),
`webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`), through the SSRF-guarded pool, within a hard
deadline of `timeout` seconds from connect to the answer's headers
(`pipeline.exchange`), and comes back classified: delivered, retry later, or
give up, with a short reason a person can act on. Scheduling the retries is
`pipeline.deliveries`' job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import urllib3

from pipeline.errors import ConfigError, FetchError
from pipeline.exchange import Exchange
from pipeline.models import RequestRecord, iso
from pipeline.netguard import guarded_pool, validate_url

EVENT_COMPLETED = "request.completed"
SECRET_PREFIX = "whsec_"
MAX_RETRY_AFTER = 3600.0  # a receiver may ask for a pause, not for a week


def completion_event(
    record: RequestRecord, *, status_url: str, output_csv_url: str | None
) -> dict[str, Any]:
    return {
        "event": EVENT_COMPLETED,
        "request_id": record.request_id,
        "status": str(record.status),
        "total_images": record.total_images,
        "processed_images": record.processed_images,
        "failed_images": record.failed_images,
        "succeeded_images": record.succeeded_images,
        "cancelled_images": record.cancelled_images,
        "created_at": iso(record.created_at),
        "completed_at": iso(record.completed_at),
        "status_url": status_url,
        "output_csv_url": output_csv_url,
        "error": record.error,
    }


def event_body(event: dict[str, Any]) -> bytes:
    """An event's exact bytes, the same on every webhook attempt, before and after
    restarts (what is signed), and on NATS: keys sorted, no spaces."""
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


def secret_key(secret: str) -> bytes:
    """The HMAC key: base64 after an optional `whsec_`, exactly as receivers' libraries
    (Svix, standardwebhooks) read the same secret, so both sides derive the same key."""
    encoded = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ConfigError(
            "WEBHOOK_SECRET must be base64, optionally prefixed whsec_; make one with "
            'python -c "import base64,secrets;'
            "print('whsec_'+base64.b64encode(secrets.token_bytes(32)).decode())\""
        ) from exc
    if len(key) < 16:
        raise ConfigError("WEBHOOK_SECRET must decode to at least 16 bytes")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(key: bytes | None, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "imagepipe-webhook/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
    }
    if key:
        headers["webhook-signature"] = signature(key, msg_id, timestamp, body)
    return headers


@dataclass(frozen=True)
class Attempt:
    at: str
    status_code: int | None
    error: str | None
    outcome: str  # "delivered" | "retry" | "give_up"
    retry_after: float | None = None

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "outcome"}


class WebhookSender:
    def __init__(
        self,
        *,
        secret: str = "",
        timeout: float = 10.0,
        allow_private_networks: bool = False,
        pool: urllib3.PoolManager | None = None,
        clock=time.time,
    ):
        self.key = secret_key(secret) if secret else None
        self.timeout = timeout
        self.pool = pool or guarded_pool(allow_private_networks, retries=False)
        self.clock = clock

    def send(self, url: str, msg_id: str, body: bytes) -> Attempt:
        now = self.clock()
        at = iso(datetime.fromtimestamp(now, UTC))
        headers = signed_headers(self.key, msg_id, int(now), body)
        # The receiver's status and headers are the answer; its body is never read,
        # so an endless one costs nothing.
        with Exchange(self.timeout, peer="receiver", idle=self.timeout) as exchange:
            try:
                validate_url(url)  # shape (scheme, host, no userinfo); the pool checks addresses
                response = self.pool.request(
                    "POST",
                    url,
                    body=body,
                    headers=headers,
                    redirect=False,
                    retries=False,
                    preload_content=False,
                    timeout=urllib3.Timeout(total=self.timeout),
                )
            except FetchError as exc:
                # A refused address or malformed URL is never retried; a name that
                # could not be resolved (now) is, as a failed delivery.
                if exc.transient:
                    return Attempt(at, None, f"delivery failed: {exc.reason}", "retry")
                return Attempt(at, None, exc.reason, "give_up")
            except urllib3.exceptions.HTTPError as exc:  # refused, reset, late, flooding
                # Whatever the receiver did wrong, it may do better later: retried.
                reason = exchange.failure(exc).reason
                return Attempt(at, None, f"delivery failed: {reason}", "retry")
            response.close()
        code = response.status
        if 200 <= code < 300:
            return Attempt(at, code, None, "delivered")
        if code == 429 or code >= 500:
            wait = _retry_after(response.headers.get("Retry-After"), now)
            return Attempt(at, code, f"receiver answered HTTP {code}", "retry", wait)
        if 300 <= code < 400:
            error = f"receiver answered HTTP {code} (redirects are not followed)"
            return Attempt(at, code, error, "give_up")
        return Attempt(at, code, f"receiver answered HTTP {code}", "give_up")


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from `Retry-After` (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = (
            float(value) if value.isdigit() else parsedate_to_datetime(value).timestamp() - now
        )
    except (TypeError, ValueError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)

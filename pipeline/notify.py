"""Tell the outside world a request finished: a webhook POST.

The payload is built by a pure function; delivery is one POST with a
timeout, through the same address guard as image downloads. Every attempt is
returned as data for the request's record, so the status API shows whether
the receiver got it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import urllib3

from pipeline.errors import FetchError
from pipeline.models import RequestRecord, iso
from pipeline.netguard import check_url, guarded_pool

log = logging.getLogger(__name__)
EVENT_COMPLETED = "request.completed"


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
        "created_at": iso(record.created_at),
        "completed_at": iso(record.completed_at),
        "status_url": status_url,
        "output_csv_url": output_csv_url,
        "error": record.error,
    }


class WebhookNotifier:
    def __init__(
        self,
        *,
        timeout: float = 10.0,
        allow_private_networks: bool = False,
        pool: urllib3.PoolManager | None = None,
    ):
        self.timeout = timeout
        self.allow_private = allow_private_networks
        self.pool = pool or guarded_pool(allow_private_networks, retries=False)

    def deliver(self, url: str, event: dict[str, Any]) -> dict[str, Any]:
        """POST the event once; return the delivery state to record."""
        attempt: dict[str, Any] = {"at": iso(datetime.now(UTC)), "status_code": None, "error": None}
        state: dict[str, Any] = {"url": url, "event": event["event"], "attempts": [attempt]}
        try:
            check_url(url, allow_private=self.allow_private)
            response = self.pool.request(
                "POST",
                url,
                body=json.dumps(event).encode(),
                headers={"Content-Type": "application/json", "User-Agent": "imagepipe-webhook/0.1"},
                redirect=False,
                retries=False,
                timeout=urllib3.Timeout(total=self.timeout),
            )
            attempt["status_code"] = response.status
            ok = 200 <= response.status < 300
            if not ok:
                attempt["error"] = f"receiver answered HTTP {response.status}"
        except FetchError as exc:
            attempt["error"] = exc.reason
            ok = False
        except urllib3.exceptions.HTTPError as exc:
            attempt["error"] = f"delivery failed: {exc}"
            ok = False
        state["status"] = "delivered" if ok else "failed"
        if not ok:
            log.warning("webhook to %s failed: %s", url, attempt["error"])
        return state

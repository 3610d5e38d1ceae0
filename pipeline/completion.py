"""Completing a request: its final status, output CSV, outbox and notifications.

`final_status` is the pure decision; `Completion` carries it out. The final
status is written only while this process holds the request's lease
(`finish(..., owner=...)`), together with the webhook delivery it owes (an
outbox), so two processes can never both finish a request and send two
different webhooks for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from pipeline import outputs
from pipeline.deliveries import Deliveries
from pipeline.errors import Incomplete, StorageError
from pipeline.keys import cancel_marker_key, output_csv_key
from pipeline.links import Links
from pipeline.models import Counters, ReasonCount, RequestStatus
from pipeline.notify import completion_event
from pipeline.records.base import RecordStore
from pipeline.storage import Storage

log = logging.getLogger(__name__)


def final_status(counters: Counters, *, cancelled: bool) -> RequestStatus:
    if cancelled:
        return RequestStatus.CANCELLED
    if counters.failed_images == 0:
        return RequestStatus.COMPLETED
    if counters.failed_images == counters.processed_images:
        # Not one image came out: the same word as one failure in 10,000 would hide
        # a run that did nothing (e.g. every host refused, a setting forgotten).
        return RequestStatus.FAILED
    return RequestStatus.COMPLETED_WITH_ERRORS


def all_failed_error(counters: Counters, common: ReasonCount | None) -> str:
    """A failed request's error when every image failed: the most common reason."""
    total = counters.failed_images
    if common is None:
        return f"all {total} images failed"
    return (
        f"all {total} images failed; the most common reason ({common.count} of {total}): "
        f"{common.example}"
    )


class Completion:
    def __init__(
        self,
        store: RecordStore,
        storage: Storage,
        deliveries: Deliveries,
        links: Links,
        *,
        owner: str,
        clock: Callable[[], datetime],
        publish: Callable[[dict], object] | None = None,
        default_webhook_url: str = "",
    ):
        self.store = store
        self.storage = storage
        self.deliveries = deliveries
        self.links = links
        self.owner = owner
        self.clock = clock
        self.publish = publish
        self.default_webhook_url = default_webhook_url

    def stop_tasks(self, request_id: str) -> None:
        """Tell the request's tasks, wherever they run, to start no more downloads."""
        self.storage.put(cancel_marker_key(request_id), b"cancelled\n")

    def complete(self, request_id: str, *, cancelled: bool) -> bool:
        """Write the output CSV and the final status. False when another process owns it.

        A storage that cannot take the CSV does not change the status (logged; the
        API rebuilds the CSV from the records); a failing record store raises.
        """
        if cancelled:
            self.store.cancel_pending_images(request_id)
        counters = self.store.recount(request_id)
        record = self.store.get_request(request_id)
        if record is None:
            return False
        pending = record.total_images - counters.processed_images - counters.cancelled_images
        if pending > 0:
            raise Incomplete(request_id, pending)
        key = output_csv_key(request_id)
        try:
            outputs.write(self.store, self.storage, request_id, key)
        except StorageError as exc:
            # The images' results are recorded, and they decide the status; the CSV
            # is a copy of those records, rebuilt on demand when it is missing.
            log.error(
                "request %s: output CSV not stored (%s); GET %s rebuilds it from the records",
                request_id,
                exc,
                self.links.output_csv(request_id),
            )
        status = final_status(counters, cancelled=cancelled)
        error = None
        if status is RequestStatus.FAILED:
            common = self.store.failure_summary(request_id, limit=1)
            error = all_failed_error(counters, common[0] if common else None)
        finished = self.finish(request_id, status, output_key=key, error=error)
        if finished:
            log.info(
                "request %s %s: %d images, %d failed, %d cancelled",
                request_id,
                status,
                counters.processed_images,
                counters.failed_images,
                counters.cancelled_images,
            )
        return finished

    def fail(self, request_id: str, error: str) -> bool:
        return self.finish(request_id, RequestStatus.FAILED, error=error)

    def finish(
        self,
        request_id: str,
        status: RequestStatus,
        *,
        output_key: str | None = None,
        error: str | None = None,
    ) -> bool:
        """Record the final status with the webhook it owes, then queue it and publish.

        The event is built from the record as it will be stored, so its body is
        what the status API shows afterwards.
        """
        record = self.store.get_request(request_id)
        if record is None:
            return False
        # Milliseconds: what both stores keep, so the event matches the status API.
        at = self.clock()
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)
        final = replace(record, status=status, completed_at=at, output_key=output_key, error=error)
        event = completion_event(
            final,
            status_url=self.links.status(request_id),
            output_csv_url=self.links.output_csv(request_id) if output_key else None,
        )
        url = record.webhook_url or self.default_webhook_url
        delivery = self.deliveries.pending_state(request_id, url, event) if url else None
        if not self.store.finish(
            request_id,
            status,
            at,
            output_key=output_key,
            error=error,
            webhook=delivery,
            owner=self.owner,
        ):
            log.warning("request %s: not finished here, another process owns it", request_id)
            return False
        # The status is final now; nothing below may change it. (A delivery not
        # queued here is still stored as pending: any process's sweep sends it.)
        try:
            if delivery is not None:
                self.deliveries.queue(request_id, url)
            if self.publish is not None:
                self.publish(event)  # NATS: at most once by design
        except Exception:
            log.exception("notifying the completion of %s failed", request_id)
        return True

"""The record store interface: what the pipeline needs, nothing more.

Two backends implement it: SQLite (embedded default, `records/sqlite.py`)
and MongoDB (`records/mongo.py`, when MONGODB_URI is set). One contract
test suite (`tests/contract/test_record_store.py`) runs against both.

Rules every backend keeps:
- `add_images` is idempotent: adding an image (request_id, row, position)
  that exists already changes nothing.
- `apply_results` only changes images still `pending`, and moves the
  request's counters by exactly the images it changed, so applying the same
  batch twice (a retried Dask task) counts each image once.
- Reads of a request are O(1): counters live on the request, they are never
  recomputed by scanning images except by `recount`.

Leases (several API processes on one store): an unfinished request is driven
by the one process holding its lease (`lease_owner`, `lease_expires_at`,
`heartbeat_at` on the request). `claim_request` takes it atomically (a
conditional update on MongoDB, one transaction on SQLite) only when it is free,
expired, or already the caller's; the owner renews it well before it expires
(`renew_leases`); `finish` with `owner` records a final status only while the
caller still holds the lease, and frees it. Webhook deliveries have a lease of
their own (`delivery_owner`, `delivery_expires_at`), taken by `claim_delivery`
before each attempt and given back by `set_webhook_state(..., owner=...)`, so
each attempt is made by one process and recorded once. Lease times are compared
as the store keeps them (UTC, milliseconds), with the caller's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from pipeline.models import (
    Counters,
    ImageItem,
    ImageRecord,
    ImageResult,
    ImageStatus,
    NewRequest,
    ReasonCount,
    RequestRecord,
    RequestStatus,
)


class RecordStore(Protocol):
    def create_request(self, request: NewRequest) -> None:
        """Record a new request as `pending` with zero counters."""

    def get_request(self, request_id: str) -> RequestRecord | None: ...

    def mark_processing(self, request_id: str, at: datetime) -> None:
        """pending/queued -> processing; sets started_at the first time only."""

    def mark_queued(self, request_id: str, at: datetime) -> None:
        """pending -> queued (a driver owns it, it waits for room); others unchanged."""

    def note_waiting(self, request_id: str, reason: str, at: datetime) -> None:
        """Say why an unfinished request is not moving (`waiting_reason`); a final one is
        left alone. `mark_processing` and `finish` clear it."""

    def add_images(self, request_id: str, items: Sequence[ImageItem]) -> int:
        """Insert images as `pending`; returns how many were new."""

    def apply_results(
        self, request_id: str, results: Sequence[ImageResult], at: datetime
    ) -> Counters:
        """Record results of images still pending; returns the request's new counters."""

    def finish(
        self,
        request_id: str,
        status: RequestStatus,
        at: datetime,
        *,
        output_key: str | None = None,
        error: str | None = None,
        webhook: dict[str, Any] | None = None,
        owner: str | None = None,
    ) -> bool:
        """Set a final status, completed_at, and the output CSV key or error.

        With `webhook`, the request's delivery state is set in the same write.
        With `owner`, only while the request is unfinished and `owner` holds its
        lease; the lease is freed. Returns False when that condition did not hold
        (nothing written); raises RequestNotFound for an unknown id.
        """

    def set_webhook_state(
        self, request_id: str, state: dict[str, Any], *, owner: str | None = None
    ) -> bool:
        """Replace the request's webhook delivery state (a small JSON-able dict).

        With `owner`, only while `owner` holds the delivery lease, which is freed
        in the same write; returns False (nothing written) when it does not.
        RequestNotFound for an unknown id.
        """

    def claim_delivery(
        self, request_id: str, owner: str, now: datetime, lease_seconds: float
    ) -> dict[str, Any] | None:
        """Take the delivery lease for one attempt and return the delivery state.

        Only when the state is "pending", its `next_attempt_at` is not after `now`,
        and the delivery lease is free, expired or `owner`'s. Otherwise None.
        """

    def list_images(self, request_id: str, row_start: int, row_end: int) -> list[ImageRecord]:
        """Images of rows in [row_start, row_end), ordered by (row, position)."""

    def iter_images(
        self, request_id: str, batch_size: int = 5000, status: ImageStatus | None = None
    ) -> Any:
        """Every image of the request (or those in `status`) ordered by (row, position),
        streamed."""

    def images_with_status(
        self, request_id: str, status: ImageStatus | None, offset: int, limit: int
    ) -> list[ImageRecord]:
        """A page of the request's images (those in `status`, or all), in order."""

    def failure_summary(self, request_id: str, limit: int = 20) -> list[ReasonCount]:
        """Failed images counted by reason group (`failures.reason_group`), most
        first, each with one full reason as an example."""

    def pending_images(self, request_id: str) -> list[tuple[int, int]]:
        """(row, position) of images without a result, ordered."""

    def recount(self, request_id: str) -> Counters:
        """Recompute counters from the images and store them (authoritative)."""

    def pending_deliveries(self) -> list[tuple[str, dict[str, Any]]]:
        """(request_id, webhook state) of deliveries still to be made (state "pending")."""

    def unfinished_requests(self) -> list[str]:
        """Ids of requests not in a final status, oldest first."""

    # -- leases -----------------------------------------------------------------
    def claim_request(
        self, request_id: str, owner: str, now: datetime, lease_seconds: float
    ) -> bool:
        """Take or renew the lease of an unfinished request, atomically.

        Succeeds when the lease is free, expired (`lease_expires_at <= now`) or
        already `owner`'s: sets lease_owner, lease_expires_at = now + lease_seconds
        and heartbeat_at = now. False for a final request or a live lease of
        another owner; RequestNotFound for an unknown id.
        """

    def renew_leases(
        self, owner: str, request_ids: Sequence[str], now: datetime, lease_seconds: float
    ) -> set[str]:
        """Extend `owner`'s live leases on these unfinished requests; returns the ids
        still held (a lease that expired is renewed only if nobody took it)."""

    def release_request(self, request_id: str, owner: str) -> None:
        """Free `owner`'s lease (a clean shutdown), so another process may take it now."""

    def claimable_requests(self, now: datetime, limit: int = 100) -> list[str]:
        """Unfinished requests whose lease is free or expired, oldest first."""

    # -- cancel, delete, list -------------------------------------------------------
    def request_cancel(self, request_id: str, at: datetime) -> bool:
        """Mark an unfinished request to be cancelled (cancel_requested_at, first time
        only). False when it is final already; RequestNotFound for an unknown id."""

    def cancel_requested(self, request_ids: Sequence[str]) -> set[str]:
        """Which of these requests have a cancel requested (one query)."""

    def cancel_pending_images(self, request_id: str) -> int:
        """Every image still pending -> cancelled; returns how many."""

    def delete_request(self, request_id: str) -> bool:
        """Remove a final request and its images. False (nothing removed) while it is
        unfinished; RequestNotFound for an unknown id."""

    def expired_requests(self, completed_before: datetime, limit: int = 100) -> list[str]:
        """Final requests completed before the given time, oldest first."""

    def list_requests(
        self,
        *,
        owner: str | None = None,
        statuses: Sequence[RequestStatus] = (),
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[RequestRecord], int]:
        """A page of requests, newest first (created_at, then request_id, descending),
        and how many match in all. `owner` set: only that owner's requests;
        `statuses` non-empty: only those statuses."""

    def close(self) -> None: ...

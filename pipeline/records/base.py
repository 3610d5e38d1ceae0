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
    NewRequest,
    RequestRecord,
    RequestStatus,
)


class RecordStore(Protocol):
    def create_request(self, request: NewRequest) -> None:
        """Record a new request as `pending` with zero counters."""

    def get_request(self, request_id: str) -> RequestRecord | None: ...

    def mark_processing(self, request_id: str, at: datetime) -> None:
        """pending -> processing; sets started_at the first time only."""

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
    ) -> None:
        """Set a final status, completed_at, and the output CSV key or error.

        With `webhook`, the request's delivery state is set in the same write.
        """

    def set_webhook_state(self, request_id: str, state: dict[str, Any]) -> None:
        """Replace the request's webhook delivery state (a small JSON-able dict)."""

    def list_images(self, request_id: str, row_start: int, row_end: int) -> list[ImageRecord]:
        """Images of rows in [row_start, row_end), ordered by (row, position)."""

    def iter_images(self, request_id: str, batch_size: int = 5000) -> Any:
        """Every image of the request ordered by (row, position), streamed."""

    def pending_images(self, request_id: str) -> list[tuple[int, int]]:
        """(row, position) of images without a result, ordered."""

    def recount(self, request_id: str) -> Counters:
        """Recompute counters from the images and store them (authoritative)."""

    def pending_deliveries(self) -> list[tuple[str, dict[str, Any]]]:
        """(request_id, webhook state) of deliveries still to be made (state "pending")."""

    def unfinished_requests(self) -> list[str]:
        """Ids of requests not in a final status, oldest first."""

    def close(self) -> None: ...

"""A request's images by status, and its failures as a CSV: finding why 2,000 of
100,000 images failed without paging through every product."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import falcon

from api.auth import ApiKeys
from api.errors import InvalidParam
from api.resources import MAX_PER_PAGE, image_body, readable_request
from pipeline.csv_output import failure_rows, render_csv
from pipeline.links import Links
from pipeline.models import ImageRecord, ImageStatus, RequestRecord
from pipeline.records.base import RecordStore
from pipeline.storage import Storage

DEFAULT_PER_PAGE = 100
ROWS_PER_CHUNK = 1000


class RequestImages:
    """GET: a page of the request's images in input order, optionally of one status."""

    def __init__(self, store: RecordStore, storage: Storage, *, base_url: str, keys: ApiKeys):
        self.store = store
        self.storage = storage
        self.links = Links(base_url)
        self.keys = keys

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        record = readable_request(self.store, self.keys, req, request_id)
        status = _status(req.get_param("status"))
        page = req.get_param_as_int("page", min_value=1, default=1)
        per_page = req.get_param_as_int(
            "per_page", min_value=1, max_value=MAX_PER_PAGE, default=DEFAULT_PER_PAGE
        )
        total = count(record, status)
        offset = (page - 1) * per_page
        images = (
            self.store.images_with_status(request_id, status, offset, per_page)
            if offset < total
            else []
        )
        query = f"status={status}&" if status else ""
        more = offset + per_page < total
        resp.media = {
            "request_id": request_id,
            "status": str(status) if status else None,
            "page": page,
            "per_page": per_page,
            "total": total,
            "next_url": f"{self.links.images(request_id)}?{query}page={page + 1}"
            f"&per_page={per_page}"
            if more
            else None,
            "images": [_listed(i, self.storage.url) for i in images],
        }
        resp.cache_control = ["no-store"]


class FailuresCsv:
    """GET: every failed image so far as CSV (line, product, URL, reason), streamed."""

    def __init__(self, store: RecordStore, *, keys: ApiKeys):
        self.store = store
        self.keys = keys

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        readable_request(self.store, self.keys, req, request_id)
        failed = self.store.iter_images(request_id, status=ImageStatus.FAILED)
        resp.content_type = "text/csv; charset=utf-8"
        resp.downloadable_as = f"{request_id}-failures.csv"
        resp.cache_control = ["no-store"]
        resp.stream = failures_csv(failed)


def failures_csv(images: Iterable[ImageRecord]) -> Iterator[bytes]:
    """The failures CSV in chunks (pipeline.csv_output builds its rows)."""
    return render_csv(failure_rows(images), ROWS_PER_CHUNK)


def count(record: RequestRecord, status: ImageStatus | None) -> int:
    """How many of the request's images are in `status`, from its counters."""
    if status is None:
        return record.total_images
    return {
        ImageStatus.FAILED: record.failed_images,
        ImageStatus.DONE: record.succeeded_images,
        ImageStatus.CANCELLED: record.cancelled_images,
        ImageStatus.PENDING: record.total_images
        - record.processed_images
        - record.cancelled_images,
    }[status]


def _status(value: str | None) -> ImageStatus | None:
    if value is None or not value.strip():
        return None
    try:
        return ImageStatus(value.strip().lower())
    except ValueError:
        known = ", ".join(s.value for s in ImageStatus)
        raise InvalidParam("status", f"must be one of {known}") from None


def _listed(image: ImageRecord, url_for: Any) -> dict[str, Any]:
    return {
        "line": image.file_line,
        "position": image.position + 1,
        "s_no": image.serial,
        "product_name": image.product_name,
        **image_body(image, url_for),
    }

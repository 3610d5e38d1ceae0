"""Falcon resources: thin handlers over the objects they are given."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from itertools import groupby
from typing import Any

import falcon

from api.auth import ApiKeys
from api.errors import NotFound
from pipeline.clock import Clock, utc_now
from pipeline.errors import NotReady, ObjectNotFound, RequestNotFound
from pipeline.health import failing
from pipeline.keys import OUTPUT_IMAGE_KEY
from pipeline.links import Links
from pipeline.models import ImageRecord, ReasonCount, RequestRecord, iso
from pipeline.options import CONTENT_TYPES, EXTENSIONS, FORMATS
from pipeline.outputs import Rebuilt
from pipeline.progress import pace
from pipeline.records.base import RecordStore
from pipeline.storage import Storage

MEDIA_KEY = OUTPUT_IMAGE_KEY
MEDIA_TYPES = {EXTENSIONS[name]: CONTENT_TYPES[name] for name in FORMATS}
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
# The links without a host: the form of a Location header, whatever the public address.
PATHS = Links("")


def readable_request(
    store: RecordStore, keys: ApiKeys, req: falcon.Request, request_id: str
) -> RequestRecord:
    """The request if the caller may see it; otherwise it does not exist (404)."""
    record = store.get_request(request_id)
    if record is None or not keys.may_read(req, record):
        raise RequestNotFound(request_id)
    return record


class RequestStatusResource:
    def __init__(
        self,
        store: RecordStore,
        storage: Storage,
        *,
        base_url: str,
        keys: ApiKeys,
        dashboard_url: str | None = None,
        clock: Clock = utc_now,
    ):
        self.store = store
        self.storage = storage
        self.base_url = base_url
        self.keys = keys
        self.dashboard_url = dashboard_url
        self.clock = clock

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        record = readable_request(self.store, self.keys, req, request_id)
        summary = self.store.failure_summary(request_id) if record.failed_images else None
        body = status_body(
            record, self.base_url, self.dashboard_url, now=self.clock(), failures=summary
        )
        if req.get_param("page") is not None or req.get_param("per_page") is not None:
            page = req.get_param_as_int("page", min_value=1, default=1)
            per_page = req.get_param_as_int(
                "per_page", min_value=1, max_value=MAX_PER_PAGE, default=DEFAULT_PER_PAGE
            )
            start = (page - 1) * per_page
            end = min(start + per_page, record.total_rows)
            images = self.store.list_images(request_id, start, end) if start < end else []
            body["products"] = products_page(images, self.storage.url)
            more = end < record.total_rows
            body["page"] = {
                "page": page,
                "per_page": per_page,
                "total_products": record.total_rows,
                "next": f"{body['status_url']}?page={page + 1}&per_page={per_page}"
                if more
                else None,
            }
        resp.media = body
        resp.cache_control = ["no-store"]


class OutputCsv:
    """The stored output CSV; rebuilt from the records (and stored again when the
    storage takes it) when the object is missing, e.g. because the storage was full
    when the request finished."""

    def __init__(self, store: RecordStore, storage: Storage, *, keys: ApiKeys):
        self.store = store
        self.storage = storage
        self.keys = keys

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        record = readable_request(self.store, self.keys, req, request_id)
        if not record.status.is_final:
            raise NotReady(
                f"Request {request_id} is {record.status} ({record.progress}% done); "
                "the output CSV is written when it finishes. Poll its status_url."
            )
        if record.output_key is None:
            why = f": {record.error}" if record.error else "."
            raise NotReady(f"Request {request_id} is {record.status} and has no output CSV{why}")
        try:
            stream: Any = self.storage.open(record.output_key, "rb")
        except ObjectNotFound:
            stream = Rebuilt(self.store, self.storage, request_id, record.output_key)
        resp.content_type = "text/csv; charset=utf-8"
        resp.downloadable_as = f"{request_id}-output.csv"
        resp.stream = stream


class Media:
    """Serves stored outputs when storage is local files (remote storage serves itself)."""

    def __init__(self, storage: Storage, store: RecordStore, *, keys: ApiKeys):
        self.storage = storage
        self.store = store
        self.keys = keys

    def on_get(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        match = MEDIA_KEY.match(key)
        not_found = NotFound(f"No media at {key!r}.")
        if not match:
            raise not_found
        if self.keys.required:
            # Same rule as the request's status: another key's image does not exist.
            record = self.store.get_request(match["request_id"])
            if record is None or not self.keys.may_read(req, record):
                raise not_found
        try:
            stream = self.storage.open(key, "rb")
        except ObjectNotFound as exc:
            raise not_found from exc
        resp.content_type = MEDIA_TYPES[match["extension"]]
        # With keys, a shared cache must not hand one owner's image to another caller.
        resp.cache_control = ["private" if self.keys.required else "public", "max-age=86400"]
        resp.stream = stream


class OpenApi:
    def __init__(self, document: dict[str, Any]):
        self.document = document

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.document


class Html:
    """A page rendered once at start-up (the docs) or read from the package (the upload page)."""

    def __init__(self, html: str):
        self.html = html

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.text = self.html


class Health:
    """Each component's state; 503 naming those failing (`healthy: false`), so a load
    balancer stops sending work here and an operator sees which part to fix."""

    def __init__(self, describe: Callable[[], dict[str, Any]]):
        self.describe = describe

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        components = self.describe()
        down = failing(components)
        resp.media = {"status": "unavailable" if down else "ok", "failing": down, **components}
        resp.cache_control = ["no-store"]
        if down:
            resp.status = falcon.HTTP_503


def status_body(
    record: RequestRecord,
    base_url: str,
    dashboard_url: str | None = None,
    *,
    now: datetime,
    failures: list[ReasonCount] | None = None,
) -> dict[str, Any]:
    """A request's status. `failures`: its reason summary, when it was read (the
    single request's answers; not the list's, which would read it per request)."""
    rid = record.request_id
    final = record.status.is_final
    links = Links(base_url)
    speed = pace(record, now)
    return {
        "request_id": rid,
        "status": str(record.status),
        "total_products": record.total_rows,
        "total_images": record.total_images,
        "processed_images": record.processed_images,
        "succeeded_images": record.succeeded_images,
        "failed_images": record.failed_images,
        "cancelled_images": record.cancelled_images,
        "progress": record.progress,
        "images_per_second": speed.images_per_second,
        "eta_seconds": speed.eta_seconds,
        "failures": failures_body(record, links, failures),
        "created_at": iso(record.created_at),
        "started_at": iso(record.started_at),
        "updated_at": iso(record.updated_at),
        "completed_at": iso(record.completed_at),
        "cancel_requested_at": iso(record.cancel_requested_at),
        "error": record.error,
        "waiting_reason": record.waiting_reason,
        # null only for a request recorded before options existed (the defaults then)
        "options": record.options.as_dict() if record.options else None,
        "status_url": links.status(rid),
        "products_url": f"{links.status(rid)}?page=1",
        "cancel_url": None if final else links.cancel(rid),
        "output_csv_url": links.output_csv(rid) if final and record.output_key else None,
        # the delivery state without its stored payload (the receiver got that)
        "webhook": {k: v for k, v in record.webhook.items() if k != "payload"} or None,
        "dashboard_url": dashboard_url,
    }


def failures_body(
    record: RequestRecord, links: Links, summary: list[ReasonCount] | None
) -> dict[str, Any] | None:
    if summary is None or record.failed_images == 0:
        return None
    rid = record.request_id
    return {
        "total": record.failed_images,
        "by_reason": [
            {"reason": r.reason, "count": r.count, "example": r.example} for r in summary
        ],
        "images_url": f"{links.images(rid)}?status=failed",
        "csv_url": links.failures_csv(rid),
    }


def image_body(image: ImageRecord, url_for: Callable[[str], str]) -> dict[str, Any]:
    return {
        "input_url": image.input_url,
        "status": str(image.status),
        "output_url": url_for(image.output_key) if image.output_key else None,
        "error": image.error,
        "bytes_in": image.bytes_in,
        "bytes_out": image.bytes_out,
        "width": image.width,
        "height": image.height,
    }


def products_page(images: list[ImageRecord], url_for: Callable[[str], str]) -> list[dict[str, Any]]:
    products = []
    for row, group in groupby(images, key=lambda i: i.row):
        members = list(group)
        first = members[0]
        products.append(
            {
                "line": first.file_line,  # how people name a product: its line in the file
                "row": row + 1,  # its position among the products (older clients)
                "s_no": first.serial,
                "product_name": first.product_name,
                "images": [image_body(i, url_for) for i in members],
            }
        )
    return products

"""Falcon resources: thin handlers over the objects they are given."""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import groupby
from typing import Any
from urllib.parse import urlsplit

import falcon

from pipeline.csv_input import parse_products
from pipeline.errors import InputError, NotReady, PayloadTooLarge, RequestNotFound
from pipeline.models import ImageRecord, NewRequest, RequestRecord, RequestStatus, iso
from pipeline.netguard import ALLOWED_SCHEMES
from pipeline.records.base import RecordStore
from pipeline.runner import Clock
from pipeline.service import csv_limits
from pipeline.settings import Settings
from pipeline.storage import Storage
from pipeline.tasks import input_csv_key

MEDIA_KEY = re.compile(r"^requests/[0-9a-f]{32}/images/\d{7}-\d{3}\.jpg$")
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500


class Uploads:
    def __init__(
        self,
        settings: Settings,
        store: RecordStore,
        storage: Storage,
        runner,
        *,
        clock: Clock,
        new_id: Callable[[], str],
    ):
        self.settings = settings
        self.limits = csv_limits(settings)
        self.store = store
        self.storage = storage
        self.runner = runner
        self.clock = clock
        self.new_id = new_id

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.content_length is not None and req.content_length > self.settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"the upload is {req.content_length} bytes; the limit is "
                f"{self.settings.max_upload_bytes} bytes (MAX_UPLOAD_BYTES)"
            )
        if not (req.content_type or "").startswith("multipart/form-data"):
            raise falcon.HTTPUnsupportedMediaType(
                title="Expected multipart/form-data",
                description="Send the CSV as a multipart form field named 'file', "
                "e.g. curl -F file=@products.csv http://localhost:5000/api/v1/upload",
            )
        data, filename, webhook_url = self._read_form(req)
        products = parse_products(data, self.limits)

        request_id = self.new_id()
        # Input first, record second: a record never points at a missing CSV.
        self.storage.put(input_csv_key(request_id), data)
        self.store.create_request(
            NewRequest(
                request_id=request_id,
                created_at=self.clock(),
                total_rows=len(products),
                total_images=sum(len(p.urls) for p in products),
                source_name=filename,
                webhook_url=webhook_url,
            )
        )
        self.runner.submit(request_id)
        base = self.settings.base_url
        resp.status = falcon.HTTP_202
        resp.location = f"/api/v1/status/{request_id}"
        resp.media = {
            "request_id": request_id,
            "status": str(RequestStatus.PENDING),
            "status_url": f"{base}/api/v1/status/{request_id}",
            "output_csv_url": f"{base}/api/v1/output/{request_id}.csv",
            "total_products": len(products),
            "total_images": sum(len(p.urls) for p in products),
        }

    def _read_form(self, req: falcon.Request) -> tuple[bytes, str, str | None]:
        data: bytes | None = None
        filename = ""
        webhook_url: str | None = None
        try:
            for part in req.get_media():
                if part.name == "file":
                    data = part.stream.read(self.settings.max_upload_bytes + 1)
                    filename = part.filename or ""
                elif part.name == "webhook_url":
                    webhook_url = part.text.strip() or None
        except falcon.MediaMalformedError as exc:
            raise falcon.HTTPBadRequest(
                title="Malformed multipart body", description=str(exc.description or exc)
            ) from exc
        if data is None:
            raise falcon.HTTPBadRequest(
                title="Missing file",
                description="The multipart form has no field named 'file'; "
                "send the CSV as -F file=@products.csv",
            )
        if len(data) > self.settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"the CSV is over the limit of {self.settings.max_upload_bytes} bytes "
                "(MAX_UPLOAD_BYTES)"
            )
        if webhook_url is not None:
            _check_webhook_url(webhook_url)
        return data, filename, webhook_url


class RequestStatusResource:
    def __init__(self, store: RecordStore, storage: Storage, *, base_url: str):
        self.store = store
        self.storage = storage
        self.base_url = base_url

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        record = self.store.get_request(request_id)
        if record is None:
            raise RequestNotFound(request_id)
        body = status_body(record, self.base_url)
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
    def __init__(self, store: RecordStore, storage: Storage):
        self.store = store
        self.storage = storage

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        record = self.store.get_request(request_id)
        if record is None:
            raise RequestNotFound(request_id)
        if not record.status.is_final:
            raise NotReady(
                f"Request {request_id} is {record.status} ({record.progress}% done); "
                "the output CSV is written when it finishes. Poll its status_url."
            )
        if record.output_key is None:
            raise NotReady(f"Request {request_id} failed and has no output CSV: {record.error}")
        resp.content_type = "text/csv; charset=utf-8"
        resp.downloadable_as = f"{request_id}-output.csv"
        resp.stream = self.storage.open(record.output_key, "rb")


class Media:
    """Serves stored outputs when storage is local files (remote storage serves itself)."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def on_get(self, req: falcon.Request, resp: falcon.Response, key: str) -> None:
        if not MEDIA_KEY.match(key):
            raise falcon.HTTPNotFound(title="Not found", description=f"No media at {key!r}.")
        try:
            stream = self.storage.open(key, "rb")
        except FileNotFoundError as exc:
            raise falcon.HTTPNotFound(
                title="Not found", description=f"No media at {key!r}."
            ) from exc
        resp.content_type = "image/jpeg"
        resp.cache_control = ["public", "max-age=86400"]
        resp.stream = stream


class Health:
    def __init__(self, describe: Callable[[], dict[str, Any]]):
        self.describe = describe

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok", **self.describe()}


def status_body(record: RequestRecord, base_url: str) -> dict[str, Any]:
    rid = record.request_id
    final = record.status.is_final
    return {
        "request_id": rid,
        "status": str(record.status),
        "total_products": record.total_rows,
        "total_images": record.total_images,
        "processed_images": record.processed_images,
        "succeeded_images": record.succeeded_images,
        "failed_images": record.failed_images,
        "progress": record.progress,
        "created_at": iso(record.created_at),
        "started_at": iso(record.started_at),
        "updated_at": iso(record.updated_at),
        "completed_at": iso(record.completed_at),
        "error": record.error,
        "status_url": f"{base_url}/api/v1/status/{rid}",
        "products_url": f"{base_url}/api/v1/status/{rid}?page=1",
        "output_csv_url": f"{base_url}/api/v1/output/{rid}.csv"
        if final and record.output_key
        else None,
        "webhook": record.webhook or None,
    }


def products_page(images: list[ImageRecord], url_for: Callable[[str], str]) -> list[dict[str, Any]]:
    products = []
    for row, group in groupby(images, key=lambda i: i.row):
        members = list(group)
        first = members[0]
        products.append(
            {
                "row": row + 1,
                "s_no": first.serial,
                "product_name": first.product_name,
                "images": [
                    {
                        "input_url": i.input_url,
                        "status": str(i.status),
                        "output_url": url_for(i.output_key) if i.output_key else None,
                        "error": i.error,
                        "bytes_in": i.bytes_in,
                        "bytes_out": i.bytes_out,
                    }
                    for i in members
                ],
            }
        )
    return products


def _check_webhook_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES or not parts.hostname:
        raise InputError(f"webhook_url must be an absolute http(s) URL, got {url!r}")

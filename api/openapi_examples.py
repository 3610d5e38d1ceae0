"""The example bodies of the OpenAPI document, kept apart from its structure
(api/openapi.py), which names them. They follow the README's
request (two products, three images, one of them failing) from upload to completion,
with a large request under way beside it; tests/api/test_openapi.py validates each
against its schema.
"""

from __future__ import annotations

from typing import Any

from api.images import DEFAULT_PER_PAGE as DEFAULT_IMAGES_PER_PAGE
from api.requests import DEFAULT_LIST_PER_PAGE
from api.resources import DEFAULT_PER_PAGE as DEFAULT_PRODUCTS_PER_PAGE
from pipeline.csv_output import FAILURE_COLUMNS
from pipeline.keys import output_key
from pipeline.links import Links
from pipeline.models import ImageStatus
from pipeline.options import FIELDS, MAX_QUALITY, MIN_QUALITY, OptionDefaults

EXAMPLE_ID = "3f0c9a4e6b1d4c2a9e8f7a6b5c4d3e2f"  # the README's two products, three images
BIG_ID = "9b2e17d04c6a4f8e8d3b5a7c1e0f9d2a"  # 3,000 images, under way
EXAMPLE_CSV = (
    "S. No.,Product Name,Input Image Urls\n"
    '1,SKU1,"https://example.com/image1.jpg,https://example.com/image2.jpg"\n'
    "2,SKU2,https://example.com/image3.png\n"
)
NOT_FOUND = "download failed: HTTP 404"  # why image3.png failed
# The examples each error code shows unless its route gives its own (summaries of
# Examples.error_bodies).
USUAL_ERRORS = {
    "400": ("bad query parameter",),
    "401": ("no key",),
    "404": ("unknown request",),
    "409": ("final already",),
    "411": ("no length",),
    "413": ("too big",),
    "415": ("not multipart",),
    "422": ("bad CSV", "bad option", "bad webhook_url"),
    "429": ("over the limit",),
    "503": ("storage down",),
}


class Examples:
    """Example bodies, with this server's links and option defaults."""

    def __init__(self, base_url: str, defaults: OptionDefaults | None):
        self.base = (base_url or "http://localhost:5000").rstrip("/")
        self.links = Links(self.base)
        self.status_url = self.links.status(EXAMPLE_ID)
        self.output_csv_url = self.links.output_csv(EXAMPLE_ID)
        self.cancel_url = self.links.cancel(EXAMPLE_ID)
        self.defaults = defaults or OptionDefaults()

    def options(self, fmt: str, max_width: int | None = None) -> dict[str, Any]:
        return {
            "format": fmt,
            "quality": self.defaults.quality_for(fmt),
            "max_width": max_width,
            "max_height": None,
        }

    def media(self, row: int, position: int) -> str:
        return f"{self.base}/media/{output_key(EXAMPLE_ID, row, position, 'webp')}"

    def accepted(self) -> dict[str, Any]:
        return {
            "request_id": EXAMPLE_ID,
            "status": "pending",
            "status_url": self.status_url,
            "output_csv_url": self.output_csv_url,
            "total_products": 2,
            "total_images": 3,
            "options": self.options("webp", 512),
        }

    def status(self, rid: str, **fields: Any) -> dict[str, Any]:
        status_url = self.links.status(rid)
        return {
            "request_id": rid,
            "status": "processing",
            "failures": None,
            "created_at": "2025-05-01T09:30:00.120000Z",
            "started_at": "2025-05-01T09:30:00.410000Z",
            "completed_at": None,
            "cancel_requested_at": None,
            "error": None,
            "waiting_reason": None,
            "options": self.options("webp", 512),
            "status_url": status_url,
            "products_url": f"{status_url}?page=1",
            "cancel_url": self.links.cancel(rid),
            "output_csv_url": None,
            "webhook": None,
            "dashboard_url": "http://127.0.0.1:8787/status",
            **fields,
        }

    @staticmethod
    def counts(products: int, images: int, succeeded: int, failed: int) -> dict[str, Any]:
        """A status's counters. Processed and progress follow from the others as
        RequestRecord computes them, so that an example cannot contradict itself."""
        processed = succeeded + failed
        return {
            "total_products": products,
            "total_images": images,
            "processed_images": processed,
            "succeeded_images": succeeded,
            "failed_images": failed,
            "cancelled_images": 0,
            "progress": round(100.0 * processed / images, 2),
        }

    def failures(self, rid: str, total: int, *groups: tuple[str, int, str]) -> dict[str, Any]:
        return {
            "total": total,
            "by_reason": [
                {"reason": reason, "count": count, "example": example}
                for reason, count, example in groups
            ],
            "images_url": f"{self.links.images(rid)}?status=failed",
            "csv_url": self.links.failures_csv(rid),
        }

    def processing(self, **changes: Any) -> dict[str, Any]:
        fields = dict(
            **self.counts(1200, 3000, succeeded=1238, failed=12),
            images_per_second=25.0,
            eta_seconds=70.0,
            failures=self.failures(
                BIG_ID,
                12,
                (NOT_FOUND, 9, NOT_FOUND),
                (
                    "image is NxN = N pixels, over the limit of N",
                    3,
                    "image is 9000x9000 = 81000000 pixels, over the limit of 50000000",
                ),
            ),
            updated_at="2025-05-01T09:30:50.470000Z",
        )
        return self.status(BIG_ID, **(fields | changes))

    def finished(self) -> dict[str, Any]:
        return self.status(
            EXAMPLE_ID,
            status="completed_with_errors",
            **self.counts(2, 3, succeeded=2, failed=1),
            images_per_second=None,
            eta_seconds=None,
            failures=self.failures(EXAMPLE_ID, 1, (NOT_FOUND, 1, NOT_FOUND)),
            updated_at="2025-05-01T09:30:02.300000Z",
            completed_at="2025-05-01T09:30:02.300000Z",
            cancel_url=None,
            output_csv_url=self.output_csv_url,
            webhook={
                "id": f"msg_{EXAMPLE_ID}",
                "event": "request.completed",
                "url": "https://example.com/hooks/images",
                "status": "delivered",
                "attempt_count": 1,
                "attempts": [
                    {
                        "at": "2025-05-01T09:30:02.410000Z",
                        "status_code": 200,
                        "error": None,
                        "retry_after": None,
                    }
                ],
                "next_attempt_at": None,
            },
            products=[
                {
                    "row": 1,
                    "line": 2,
                    "s_no": "1",
                    "product_name": "SKU1",
                    "images": [self.image1(), self.image2()],
                },
                {
                    "row": 2,
                    "line": 3,
                    "s_no": "2",
                    "product_name": "SKU2",
                    "images": [self.image3()],
                },
            ],
            page={
                "page": 1,
                "per_page": DEFAULT_PRODUCTS_PER_PAGE,
                "total_products": 2,
                "next": None,
            },
        )

    # The README request's three images, as a status's products page shows them.
    def image1(self) -> dict[str, Any]:
        return self.image("https://example.com/image1.jpg", self.media(0, 0), 48213)

    def image2(self) -> dict[str, Any]:
        return self.image("https://example.com/image2.jpg", self.media(0, 1), 61877)

    def image3(self) -> dict[str, Any]:
        return self.image("https://example.com/image3.png", None, None, NOT_FOUND)

    @staticmethod
    def image(
        url: str, output: str | None, bytes_in: int | None, error: str | None = None
    ) -> dict[str, Any]:
        return {
            "input_url": url,
            "status": "failed" if error else "done",
            "output_url": output,
            "error": error,
            "bytes_in": bytes_in,
            "bytes_out": bytes_in // 5 if bytes_in else None,
            "width": 512 if bytes_in else None,
            "height": 384 if bytes_in else None,
        }

    @staticmethod
    def row(
        line: int, position: int, s_no: str, name: str, image: dict[str, Any]
    ) -> dict[str, Any]:
        """`image` as the images listing shows it: with where it is in the uploaded file."""
        return {"line": line, "position": position, "s_no": s_no, "product_name": name, **image}

    def cancelling(self) -> dict[str, Any]:
        # The cancel's answer does not read the failure summary (the status does).
        return self.processing(cancel_requested_at="2025-05-01T09:30:51.200000Z", failures=None)

    def request_list(self) -> dict[str, Any]:
        return {
            "requests": [self.processing(failures=None)],
            "page": {"page": 1, "per_page": DEFAULT_LIST_PER_PAGE, "total": 1, "next": None},
        }

    def failed_images(self) -> dict[str, Any]:
        return {
            "request_id": EXAMPLE_ID,
            "status": "failed",
            "page": 1,
            "per_page": DEFAULT_IMAGES_PER_PAGE,
            "total": 1,
            "next_url": None,
            "images": [self.row(3, 1, "2", "SKU2", self.image3())],
        }

    def all_images(self) -> dict[str, Any]:
        return {
            **self.failed_images(),
            "status": None,
            "per_page": 1,
            "total": 3,
            "next_url": f"{self.links.images(EXAMPLE_ID)}?page=2&per_page=1",
            "images": [self.row(2, 1, "1", "SKU1", self.image1())],
        }

    def output_csv(self) -> str:
        return (
            "S. No.,Product Name,Input Image Urls,Output Image Urls\r\n"
            '1,SKU1,"https://example.com/image1.jpg,https://example.com/image2.jpg",'
            f'"{self.media(0, 0)},{self.media(0, 1)}"\r\n'
            "2,SKU2,https://example.com/image3.png,\r\n"
        )

    @staticmethod
    def failures_csv() -> str:
        return (
            ",".join(FAILURE_COLUMNS) + "\r\n"
            f"3,2,SKU2,https://example.com/image3.png,{NOT_FOUND}\r\n"
        )

    def event(self) -> dict[str, Any]:
        return {
            "event": "request.completed",
            "request_id": EXAMPLE_ID,
            "status": "completed_with_errors",
            "total_images": 3,
            "processed_images": 3,
            "failed_images": 1,
            "succeeded_images": 2,
            "cancelled_images": 0,
            "created_at": "2025-05-01T09:30:00.120000Z",
            "completed_at": "2025-05-01T09:30:02.300000Z",
            "status_url": self.status_url,
            "output_csv_url": self.output_csv_url,
            "error": None,
        }

    @staticmethod
    def health(failing: str | None = None) -> dict[str, Any]:
        def part(name: str, **details: Any) -> dict[str, Any]:
            broken = name == failing
            error = "OSError: [Errno 28] No space left on device" if broken else None
            return {"healthy": not broken, "error": error, **details}

        return {
            "status": "unavailable" if failing else "ok",
            "failing": [failing] if failing else [],
            "records": part("records", description="records: SQLite at data/records.db"),
            "storage": part("storage", description="storage: file:///srv/imagepipe/objects"),
            "dask": part(
                "dask",
                status="running",
                workers=2,
                dashboard="http://127.0.0.1:8787/status",
                scheduler="tcp://127.0.0.1:8786",
            ),
        }

    def errors(self, *summaries: str) -> dict[str, dict[str, Any]]:
        """The error bodies of these summaries: summary -> body."""
        bodies = self.error_bodies()
        return {summary: bodies[summary] for summary in summaries}

    def error_bodies(self) -> dict[str, dict[str, Any]]:
        """Every example error body, by summary: the usual ones of each code (USUAL_ERRORS)
        first, then those of one route."""
        rid = EXAMPLE_ID
        upload = f"{self.base}/api/v1/upload"
        csv_error = (
            "line 3, column 'Input Image Urls': 'ftp://example.com/a.jpg' is not an http(s) URL"
        )
        return {
            "bad query parameter": {
                "title": "Invalid parameter",
                "description": 'The "page" parameter is invalid. The value must be an integer.',
            },
            "no key": {
                "title": "API key required",
                "description": "This service requires an API key. Send it as "
                "'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
            },
            "unknown request": {
                "title": "Request not found",
                "description": f"There is no request with id {rid!r}.",
            },
            "final already": {
                "title": "Request already finished",
                "description": f"Request {rid} is completed; only an unfinished request "
                "can be cancelled.",
                "status": "completed",
            },
            "no length": {
                "title": "Length required",
                "description": "Send the upload with a Content-Length header "
                "(curl -F file=@products.csv does).",
            },
            "too big": {
                "title": "Payload too large",
                "description": "the CSV is over the limit of 10,485,760 bytes "
                "(MAX_UPLOAD_BYTES); split the file",
            },
            "not multipart": {
                "title": "Expected multipart/form-data",
                "description": "Send the CSV as a multipart form field named 'file', "
                f"e.g. curl -F file=@products.csv {upload}",
            },
            "bad CSV": {
                "title": "Invalid CSV",
                "description": csv_error,
                "line": 3,
                "row": 3,
                "column": "Input Image Urls",
            },
            "bad option": {
                "title": "Invalid option",
                "description": f"quality: must be {MIN_QUALITY}-{MAX_QUALITY}, got 0",
                "field": "quality",
            },
            "bad webhook_url": {
                "title": "Invalid input",
                "description": "webhook_url must be an absolute http(s) URL, got 'example.com'",
            },
            "over the limit": {
                "title": "Too many requests",
                "description": "This client is over its rate limit (60 per minute, burst 20); "
                "retry in 3 s. When polling a status, a request every few seconds is plenty.",
                "retry_after": 3,
            },
            "storage down": {
                "title": "Storage unavailable",
                "description": "The service's storage is not working right now, so this was "
                "not done (an upload is not recorded). Try again in a few seconds; GET /health "
                "says when it is back.",
                "component": "storage",
            },
            # GET on the upload route (405)
            "how to upload": {
                "title": "Method not allowed",
                "description": "Upload a CSV with POST, as a multipart form field "
                f"named 'file': curl -F file=@products.csv {upload}. Optional "
                f"fields: {', '.join(('webhook_url', *FIELDS))}. The upload page is at "
                f"{self.base}/ and the API documentation at {self.base}/docs.",
                "example": f"curl -F file=@products.csv {upload}",
                "docs": f"{self.base}/docs",
            },
            # DELETE of an unfinished request (409)
            "unfinished": {
                "title": "Request not finished",
                "description": f"Request {rid} is processing; cancel it first "
                f"(POST {self.cancel_url}), then delete it.",
                "status": "processing",
            },
            # the output CSV of an unfinished request (409)
            "not final": {
                "title": "Not ready",
                "description": f"Request {rid} is processing (33.33% done); the "
                "output CSV is written when it finishes. Poll its status_url.",
            },
            # the images listing asked for a status no image has (400)
            "bad status": {
                "title": "Invalid parameter",
                "description": 'The "status" parameter is invalid. must be one of '
                f"{', '.join(s.value for s in ImageStatus)}",
            },
            # a media key that names nothing (404)
            "no image": {"title": "Not found", "description": "No media at 'x.jpg'."},
        }

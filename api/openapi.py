"""The OpenAPI 3.1 document of the HTTP API, served at /api/v1/openapi.json.

Written by hand next to the routes it describes, with an example for every
operation (the bodies are in api/openapi_examples.py) and the completion webhook
under `webhooks`. The older clients' routes stay in `paths` (clients and
schemathesis call them) as deprecated aliases of their v1 operation: its
parameters and answers, without its prose and examples. A test validates the
document and every example in it, and a schemathesis run checks the live app
against it (no 5xx, no response that breaks it).
"""

from __future__ import annotations

from typing import Any

from api.images import DEFAULT_PER_PAGE as DEFAULT_IMAGES_PER_PAGE
from api.openapi_examples import EXAMPLE_CSV, EXAMPLE_ID, USUAL_ERRORS, Examples
from api.requests import DEFAULT_LIST_PER_PAGE, MAX_LIST_PAGE, MAX_LIST_PER_PAGE
from api.resources import DEFAULT_PER_PAGE as DEFAULT_PRODUCTS_PER_PAGE
from api.resources import MAX_PER_PAGE
from pipeline.csv_output import FAILURE_COLUMNS
from pipeline.models import ImageStatus, RequestStatus
from pipeline.options import (
    CONTENT_TYPES,
    EXTENSIONS,
    FIELDS,
    FORMATS,
    MAX_QUALITY,
    MAX_SIDE,
    MIN_QUALITY,
    OptionDefaults,
)

OPENAPI_VERSION = "3.1.0"  # 3.1 for `webhooks`; nullable is JSON Schema's type list
ERROR_CODES = {
    "400": "Malformed request (bad multipart body, missing 'file' field, bad query parameter)",
    "401": "API key required or invalid (only when API_KEYS is set)",
    "404": "No such request, or not visible to this API key",
    "409": "The request's state does not allow this (the error names its status)",
    "411": "A body without Content-Length from a server that cannot delimit it",
    "413": "Upload, rows or URLs over the limits",
    "415": "Not multipart/form-data, or a compressed body",
    "422": "Invalid CSV (the error names the line and column), invalid webhook_url, or an "
    "unknown or invalid output option (the error's `field` names it)",
    "429": "Over the rate limit; see Retry-After",
    "503": "A backend (storage or records) is failing; retry",
}
FAILURE_REASONS_SHOWN = 20  # RecordStore.failure_summary's limit
FINAL_STATUSES = [s.value for s in RequestStatus if s.is_final]
REQUEST_STATUSES = [s.value for s in RequestStatus]
IMAGE_STATUSES = [s.value for s in ImageStatus]
STATUS_MEANINGS = (
    "pending: recorded, not yet taken by a driver; queued: a driver owns it and waits for "
    "room on the cluster; processing: some of its images are being processed; completed, "
    "completed_with_errors (some images failed), failed (every image failed, or the "
    "request as a whole could not run: `error` says why) and cancelled are final."
)
# The older clients' routes: (path, method) -> (their operationId, the v1 operation's).
ALIASES = {
    ("/api/images/upload", "post"): ("uploadLegacy", "upload"),
    ("/api/images/upload", "get"): ("uploadHelpLegacy", "uploadHelp"),
    ("/api/v1/status/{request_id}", "get"): ("status", "getRequest"),
    ("/api/status/{request_id}", "get"): ("statusLegacy", "getRequest"),
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or null. An enum must list null too, or JSON Schema refuses it."""
    if "type" not in schema:  # a $ref or a composition
        notes = {k: v for k, v in schema.items() if k in ("description", "default")}
        core = {k: v for k, v in schema.items() if k not in notes}
        return {"anyOf": [core, {"type": "null"}], **notes}
    nullable = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str, examples: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON response of schema `name`; `examples`: summary -> value."""
    media: dict[str, Any] = {"schema": _ref(name)}
    if examples:
        media["examples"] = {
            _key(summary): {"summary": summary, "value": value}
            for summary, value in examples.items()
        }
    return {"description": description, "content": {"application/json": media}}


def _key(summary: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in summary.lower()).strip("_")


def _text(ctype: str, description: str, example: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {ctype: {"schema": {"type": "string"}, "example": example}},
    }


# An image and its result: the fields an Image (in a products page) and an ImageRow (in
# the images listing) share.
IMAGE_RESULT = (
    "input_url",
    "status",
    "output_url",
    "error",
    "bytes_in",
    "bytes_out",
    "width",
    "height",
)
REQUEST_ID = {
    "name": "request_id",
    "in": "path",
    "required": True,
    "description": "The id returned by the upload (32 hex characters)",
    "schema": {"type": "string"},
}
TIME = _nullable({"type": "string", "format": "date-time"})
# What any route that names a request can answer: no key, no such request (or not this
# key's), over the rate limit, a backend down.
REQUEST_ERRORS = ("401", "404", "429", "503")


def _schemas() -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "description": "Every error answer: a title, and a description a person can act "
            "on; some carry more fields saying what to fix.",
            "required": ["title"],
            "properties": {
                "title": {"type": "string"},
                "description": {"type": "string"},
                "line": _nullable(
                    {
                        "type": "integer",
                        "description": "on 422 for the CSV: the line of the uploaded file "
                        "at fault (the header is line 1)",
                    }
                ),
                "row": _nullable(
                    {"type": "integer", "description": "the same as line; kept for older clients"}
                ),
                "column": _nullable(
                    {"type": "string", "description": "on 422 for the CSV: the column at fault"}
                ),
                "retry_after": {"type": "integer", "description": "on 429: seconds to wait"},
                "status": {"type": "string", "description": "on 409: the request's status"},
                "component": {
                    "type": "string",
                    "enum": ["records", "storage"],
                    "description": "on 503: the backend that is failing",
                },
                "field": {
                    "type": "string",
                    "description": "on 422 for an output option: the form field at fault "
                    f"({', '.join(FIELDS)}, or the name of a field that is not an option)",
                },
                "example": {
                    "type": "string",
                    "description": "on 405 from the upload route: a curl command that uploads",
                },
                "docs": {
                    "type": "string",
                    "description": "on 405 from the upload route: this documentation's URL",
                },
            },
        },
        "Options": {
            "type": "object",
            "description": "The request's output options as resolved when it was accepted "
            "(the caller's, completed from the server's defaults) and stored with it.",
            "required": list(FIELDS),
            "properties": {
                "format": {
                    "type": "string",
                    "enum": list(FORMATS),
                    "description": "output image format; output URLs end "
                    + ", ".join(f".{EXTENSIONS[f]} ({f})" for f in FORMATS),
                },
                "quality": {"type": "integer", "minimum": MIN_QUALITY, "maximum": MAX_QUALITY},
                "max_width": _nullable(
                    {"type": "integer", "minimum": 1, "description": "null: no bound on the width"}
                ),
                "max_height": _nullable(
                    {"type": "integer", "minimum": 1, "description": "null: no bound on the height"}
                ),
            },
        },
        "Accepted": {
            "type": "object",
            "description": "The answer to an upload: the request is recorded and will run.",
            "required": [
                "request_id",
                "status",
                "status_url",
                "output_csv_url",
                "total_products",
                "total_images",
                "options",
            ],
            "properties": {
                "request_id": {"type": "string"},
                "status": {"type": "string", "enum": ["pending"]},
                "status_url": {"type": "string", "format": "uri", "description": "poll this"},
                "output_csv_url": {
                    "type": "string",
                    "format": "uri",
                    "description": "where the output CSV will be once the request is final",
                },
                "total_products": {"type": "integer", "minimum": 1},
                "total_images": {"type": "integer", "minimum": 1},
                "options": _ref("Options"),
            },
        },
        "Image": {
            "type": "object",
            "description": "One image of a product, in a status's products page.",
            "required": list(IMAGE_RESULT),
            "properties": {
                "input_url": {"type": "string"},
                "status": {
                    "type": "string",
                    "enum": IMAGE_STATUSES,
                    "description": "cancelled: its request was cancelled before it had a result",
                },
                "output_url": _nullable(
                    {"type": "string", "description": "ends with the extension of options.format"}
                ),
                "error": _nullable({"type": "string", "description": "why it failed"}),
                "bytes_in": _nullable({"type": "integer", "description": "downloaded size"}),
                "bytes_out": _nullable({"type": "integer", "description": "stored size"}),
                "width": _nullable({"type": "integer", "description": "of the output, pixels"}),
                "height": _nullable({"type": "integer", "description": "of the output, pixels"}),
            },
        },
        "Product": {
            "type": "object",
            "description": "One product (a row of the uploaded CSV) with its images.",
            "required": ["row", "line", "s_no", "product_name", "images"],
            "properties": {
                "row": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "the product's 1-based position among the upload's products",
                },
                "line": {
                    "type": "integer",
                    "minimum": 2,
                    "description": "its line in the uploaded file (the header is line 1)",
                },
                "s_no": {"type": "string", "description": "its S. No. cell"},
                "product_name": {"type": "string"},
                "images": {"type": "array", "items": _ref("Image")},
            },
        },
        "Failures": {
            "type": "object",
            "description": "The request's failed images so far, grouped by reason (reasons "
            "normalised, so every `HTTP 404` is one group).",
            "required": ["total", "by_reason", "images_url", "csv_url"],
            "properties": {
                "total": {"type": "integer", "minimum": 0, "description": "failed images"},
                "by_reason": {
                    "type": "array",
                    "description": f"the {FAILURE_REASONS_SHOWN} most frequent reasons, "
                    "most frequent first",
                    "items": {
                        "type": "object",
                        "required": ["reason", "count", "example"],
                        "properties": {
                            "reason": {
                                "type": "string",
                                "description": "the reason with what varies from image to "
                                "image (numbers but HTTP statuses, URLs, addresses, quoted "
                                "text) left out",
                            },
                            "count": {"type": "integer", "minimum": 1},
                            "example": {"type": "string", "description": "one reason in full"},
                        },
                    },
                },
                "images_url": {
                    "type": "string",
                    "description": "the failed images, each with its line and error "
                    "(GET /api/v1/requests/{request_id}/images?status=failed)",
                },
                "csv_url": {
                    "type": "string",
                    "description": "the same as CSV, for a spreadsheet "
                    "(GET /api/v1/requests/{request_id}/failures.csv)",
                },
            },
        },
        "WebhookDelivery": {
            "type": "object",
            "description": "The state of the request's completion webhook (the body sent is "
            "the WebhookEvent, not repeated here).",
            "required": ["id", "status"],
            "additionalProperties": True,
            "properties": {
                "id": {"type": "string", "description": "the webhook-id header: msg_<request id>"},
                "event": {"type": "string"},
                "url": {"type": "string"},
                "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
                "attempt_count": {"type": "integer", "minimum": 0},
                "attempts": {
                    "type": "array",
                    "description": "the latest attempts, oldest first",
                    "items": {
                        "type": "object",
                        "properties": {
                            "at": {"type": "string", "format": "date-time"},
                            "status_code": _nullable(
                                {"type": "integer", "description": "the receiver's answer"}
                            ),
                            "error": _nullable({"type": "string"}),
                            "retry_after": _nullable(
                                {"type": "number", "description": "the receiver's Retry-After"}
                            ),
                        },
                    },
                },
                "next_attempt_at": _nullable(
                    {"type": "string", "format": "date-time", "description": "null once settled"}
                ),
            },
        },
        "Status": {
            "type": "object",
            "description": "A request's status: counters, links, and one page of per-product "
            "results when asked for (?page=).",
            "required": [
                "request_id",
                "status",
                "total_images",
                "processed_images",
                "failed_images",
                "progress",
                "options",
            ],
            "properties": {
                "request_id": {"type": "string"},
                "status": {
                    "type": "string",
                    "enum": REQUEST_STATUSES,
                    "description": STATUS_MEANINGS,
                },
                "options": _nullable(
                    {
                        **_ref("Options"),
                        "description": "null only for a request recorded before options "
                        "existed (it came out as the server's defaults said)",
                    }
                ),
                "total_products": {"type": "integer"},
                "total_images": {"type": "integer"},
                "processed_images": {
                    "type": "integer",
                    "description": "images with a result, done or failed",
                },
                "succeeded_images": {"type": "integer"},
                "failed_images": {"type": "integer"},
                "cancelled_images": {
                    "type": "integer",
                    "description": "images left without a result by a cancel",
                },
                "progress": {
                    "type": "number",
                    "minimum": 0,
                    "maximum": 100,
                    "description": "percent of the images with a result",
                },
                "images_per_second": _nullable(
                    {
                        "type": "number",
                        "minimum": 0,
                        "description": "images with a result per second since processing "
                        "started (until it ended); null before it has a few seconds and "
                        "results to go on",
                    }
                ),
                "eta_seconds": _nullable(
                    {
                        "type": "number",
                        "minimum": 0,
                        "description": "seconds the rest should take at that rate; null "
                        "when not processing, or too early to say",
                    }
                ),
                "failures": _nullable(
                    {
                        **_ref("Failures"),
                        "description": "null while no image has failed, and in the list "
                        "of requests (GET the request for them)",
                    }
                ),
                "created_at": TIME,
                "started_at": TIME,
                "updated_at": TIME,
                "completed_at": TIME,
                "cancel_requested_at": _nullable(
                    {
                        "type": "string",
                        "format": "date-time",
                        "description": "when a cancel was asked",
                    }
                ),
                "error": _nullable(
                    {
                        "type": "string",
                        "description": "why the request failed (when every image failed: "
                        "the most common reason)",
                    }
                ),
                "waiting_reason": _nullable(
                    {
                        "type": "string",
                        "description": "why an unfinished request is not moving (a backend "
                        "out of service); null once it moves again",
                    }
                ),
                "status_url": {"type": "string"},
                "products_url": {"type": "string", "description": "the first page of products"},
                "cancel_url": _nullable(
                    {"type": "string", "description": "POST here to cancel; null once final"}
                ),
                "output_csv_url": _nullable(
                    {"type": "string", "description": "null until final with an output CSV"}
                ),
                "dashboard_url": _nullable({"type": "string", "description": "the Dask dashboard"}),
                "webhook": _nullable(
                    {
                        **_ref("WebhookDelivery"),
                        "description": "null when the request has no webhook (or is unfinished)",
                    }
                ),
                "products": {
                    "type": "array",
                    "description": "only with ?page= or ?per_page=",
                    "items": _ref("Product"),
                },
                "page": {
                    "type": "object",
                    "description": "only with ?page= or ?per_page=",
                    "required": ["page", "per_page", "total_products", "next"],
                    "properties": {
                        "page": {"type": "integer"},
                        "per_page": {"type": "integer"},
                        "total_products": {"type": "integer"},
                        "next": _nullable({"type": "string", "description": "the next page's URL"}),
                    },
                },
            },
        },
        "RequestList": {
            "type": "object",
            "required": ["requests", "page"],
            "properties": {
                "requests": {
                    "type": "array",
                    "description": "newest first; each a status without products",
                    "items": _ref("Status"),
                },
                "page": {
                    "type": "object",
                    "required": ["page", "per_page", "total", "next"],
                    "properties": {
                        "page": {"type": "integer", "minimum": 1},
                        "per_page": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_LIST_PER_PAGE,
                        },
                        "total": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "matching in all",
                        },
                        "next": _nullable({"type": "string", "description": "the next page's URL"}),
                    },
                },
            },
        },
        "ImageRow": {
            "type": "object",
            "description": "One image of the request, with where it is in the uploaded file.",
            "required": ["line", "position", "s_no", "product_name", *IMAGE_RESULT],
            "properties": {
                "line": {
                    "type": "integer",
                    "description": "the line of the uploaded file where its product is",
                },
                "position": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "1-based, among the product's URLs",
                },
                "s_no": {"type": "string"},
                "product_name": {"type": "string"},
                "input_url": {"type": "string"},
                "status": {"type": "string", "enum": IMAGE_STATUSES},
                "output_url": _nullable({"type": "string"}),
                "error": _nullable({"type": "string", "description": "why it failed"}),
                "bytes_in": _nullable({"type": "integer"}),
                "bytes_out": _nullable({"type": "integer"}),
                "width": _nullable({"type": "integer", "description": "of the output, pixels"}),
                "height": _nullable({"type": "integer", "description": "of the output, pixels"}),
            },
        },
        "ImagePage": {
            "type": "object",
            "description": "A page of a request's images in file order, optionally of one status.",
            "required": ["request_id", "status", "page", "per_page", "total", "next_url", "images"],
            "properties": {
                "request_id": {"type": "string"},
                "status": _nullable(
                    {
                        "type": "string",
                        "enum": IMAGE_STATUSES,
                        "description": "the status asked for; null: all",
                    }
                ),
                "page": {"type": "integer", "minimum": 1},
                "per_page": {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE},
                "total": {"type": "integer", "minimum": 0, "description": "matching in all"},
                "next_url": _nullable({"type": "string", "description": "the next page's URL"}),
                "images": {"type": "array", "items": _ref("ImageRow")},
            },
        },
        "WebhookEvent": {
            "type": "object",
            "description": "What a finished request's webhook POSTs, and what NATS publishes.",
            "required": [
                "event",
                "request_id",
                "status",
                "total_images",
                "processed_images",
                "failed_images",
                "succeeded_images",
                "cancelled_images",
                "created_at",
                "completed_at",
                "status_url",
                "output_csv_url",
                "error",
            ],
            "properties": {
                "event": {"type": "string", "enum": ["request.completed"]},
                "request_id": {"type": "string"},
                "status": {"type": "string", "enum": FINAL_STATUSES},
                "total_images": {"type": "integer"},
                "processed_images": {"type": "integer"},
                "failed_images": {"type": "integer"},
                "succeeded_images": {"type": "integer"},
                "cancelled_images": {"type": "integer"},
                "created_at": TIME,
                "completed_at": TIME,
                "status_url": {
                    "type": "string",
                    "description": "GET it for the details (failures included)",
                },
                "output_csv_url": _nullable(
                    {"type": "string", "description": "null when there is no output CSV"}
                ),
                "error": _nullable(
                    {"type": "string", "description": "why the request failed, as in its status"}
                ),
            },
        },
        "Health": {
            "type": "object",
            "description": "`status` and `failing`, then one object per component "
            "(records, storage, dask), each with `healthy` and `error`.",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "failing": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "the components with healthy false: records, storage, dask",
                },
            },
            "additionalProperties": True,
        },
    }


SCHEMAS = _schemas()


# -- errors ----------------------------------------------------------------------------------
def _error(ex: Examples, code: str, meaning: str = "", *examples: str) -> dict[str, Any]:
    """An error response: what `code` means on this route (else what ERROR_CODES says) and
    its example bodies by summary (else the code's usual ones)."""
    bodies = ex.errors(*(examples or USUAL_ERRORS[code]))
    return _json("Error", meaning or ERROR_CODES[code], bodies)


def _errors(ex: Examples, *codes: str) -> dict[str, Any]:
    """The usual error responses of `codes`, in code order. A route where a code means
    something else follows them with its own `"409": _error(ex, "409", ...)`: a key given
    again keeps its first place, so the answers stay in code order."""
    return {code: _error(ex, code) for code in sorted(codes)}


# -- operations ------------------------------------------------------------------------------
def _option_fields(defaults: OptionDefaults | None) -> dict[str, Any]:
    """The upload's output-option fields. Given the server's `defaults` the document
    states their values; without them it names the settings that decide them."""
    if defaults is None:
        fmt_default = "jpeg"
        fmt_note = "; empty or absent: jpeg, unless the server sets OUTPUT_FORMAT"
        quality_default = (
            "the server's default for the format: JPEG_QUALITY (50 unless set), "
            "WEBP_QUALITY and AVIF_QUALITY (calibrated to the JPEG default's SSIM)"
        )
        side_default = {
            "width": "no bound on the width, unless the server sets MAX_WIDTH",
            "height": "no bound on the height, unless the server sets MAX_HEIGHT",
        }
    else:
        fmt_default, fmt_note = defaults.format, f"; empty or absent: {defaults.format}"
        quality_default = ", ".join(f"{defaults.quality_for(f)} for {f}" for f in FORMATS)
        side_default = {
            name: f"{value} (this server's default)" if value else f"no bound on the {name}"
            for name, value in (("width", defaults.max_width), ("height", defaults.max_height))
        }
    limits = ", ".join(f"{f} {MAX_SIDE[f]}" for f in FORMATS)

    def side(name: str) -> dict[str, Any]:
        return {
            "type": "integer",
            "minimum": 1,
            "maximum": max(MAX_SIDE.values()),
            "description": f"whole number of pixels, at most the format's largest side "
            f"({limits}). Every output fits inside max_width x max_height with its aspect "
            f"ratio kept, and is never enlarged. Empty or absent: {side_default[name]}.",
        }

    return {
        "format": {
            "type": "string",
            "enum": [*FORMATS, "jpg"],
            "default": fmt_default,
            "description": f"output format (jpg means jpeg){fmt_note}. Output URLs end "
            + ", ".join(f".{EXTENSIONS[f]}" for f in FORMATS)
            + " and are served as "
            + ", ".join(CONTENT_TYPES[f] for f in FORMATS),
        },
        "quality": {
            "type": "integer",
            "minimum": MIN_QUALITY,
            "maximum": MAX_QUALITY,
            "description": f"encoder quality, whole number {MIN_QUALITY}-{MAX_QUALITY}. "
            f"Empty or absent: {quality_default}.",
        },
        "max_width": side("width"),
        "max_height": side("height"),
    }


def _upload(ex: Examples, defaults: OptionDefaults | None) -> dict[str, Any]:
    return {
        "summary": "Upload a product CSV; processing starts in the background",
        "description": "Multipart form: `file`, and optionally `webhook_url` and the output "
        f"options {', '.join(FIELDS)}. Any other field, or an option with a bad value, is "
        "refused with 422 naming it in `field`, and nothing is recorded. The 202 answer "
        "carries the resolved `options`, as every status of the request does.",
        "tags": ["requests"],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": "CSV: S. No., Product Name, Input Image Urls",
                            },
                            "webhook_url": {
                                "type": "string",
                                "description": "called when it is done (else WEBHOOK_URL)",
                            },
                            **_option_fields(defaults),
                        },
                    },
                    "examples": {
                        "webp": {
                            "summary": "WebP, at most 512 pixels wide, with a webhook",
                            "value": {
                                "file": EXAMPLE_CSV,
                                "webhook_url": "https://example.com/hooks/images",
                                "format": "webp",
                                "max_width": 512,
                            },
                        },
                        "defaults": {
                            "summary": "The server's defaults",
                            "value": {"file": EXAMPLE_CSV},
                        },
                    },
                }
            },
        },
        "responses": {
            "202": _json("Accepted", "Accepted; poll status_url", {"accepted": ex.accepted()}),
            **_errors(ex, "400", "401", "411", "413", "415", "422", "429", "503"),
        },
    }


def _upload_help(ex: Examples) -> dict[str, Any]:
    return {
        "summary": "Not an upload: says how to upload (405)",
        "description": "For a browser or a curl without -F that lands on the upload URL: "
        "the answer says how to POST the CSV, with `Allow: POST`.",
        "tags": ["requests"],
        "responses": {
            "405": _error(ex, "405", "Uploads are POSTed; the answer says how", "how to upload"),
            **_errors(ex, "401", "429"),
        },
    }


def _status(ex: Examples) -> dict[str, Any]:
    page_params = [
        {
            "name": "page",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1},
            "description": "adds `products` (per-product results) and `page`",
        },
        {
            "name": "per_page",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE},
            "description": f"products per page (default {DEFAULT_PRODUCTS_PER_PAGE})",
        },
    ]
    return {
        "summary": "A request's status: progress, failures, links; per-product results when paged",
        "description": "Poll it every few seconds until `status` is final. `failures` groups "
        "the failed images by reason and links to them, as JSON (`images_url`) and CSV "
        "(`csv_url`); `images_per_second` and `eta_seconds` say how it is going.",
        "tags": ["requests"],
        "parameters": [REQUEST_ID, *page_params],
        "responses": {
            "200": _json(
                "Status",
                "The request's status",
                {"processing": ex.processing(), "finished, ?page=1": ex.finished()},
            ),
            **_errors(ex, "400", *REQUEST_ERRORS),
        },
    }


def _paging(
    max_per_page: int, default_per_page: int, max_page: int | None = None
) -> list[dict[str, Any]]:
    """The ?page= and ?per_page= of a listing, as its resource parses them."""
    page_bound = {"maximum": max_page} if max_page else {}
    return [
        {
            "name": "page",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, **page_bound, "default": 1},
        },
        {
            "name": "per_page",
            "in": "query",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": max_per_page,
                "default": default_per_page,
            },
        },
    ]


def _list(ex: Examples) -> dict[str, Any]:
    return {
        "summary": "The caller's requests, newest first (everyone's when API_KEYS is unset)",
        "description": "With API keys, a key sees only the requests it made. Without keys the "
        "API is open and the list shows every request.",
        "tags": ["requests"],
        "parameters": [
            {
                "name": "status",
                "in": "query",
                "style": "form",
                "explode": True,
                "schema": {"type": "array", "items": {"type": "string", "enum": REQUEST_STATUSES}},
                "description": "only these statuses; repeat it or separate with commas",
            },
            *_paging(MAX_LIST_PER_PAGE, DEFAULT_LIST_PER_PAGE, max_page=MAX_LIST_PAGE),
        ],
        "responses": {
            "200": _json("RequestList", "A page of requests", {"one request": ex.request_list()}),
            **_errors(ex, "400", "401", "429", "503"),
        },
    }


def _cancel(ex: Examples) -> dict[str, Any]:
    return {
        "summary": "Cancel an unfinished request",
        "description": "The cancel is recorded and the request ends `cancelled` shortly: "
        "nothing new starts, batches already running may finish, and the images left "
        "without a result end `cancelled`. The answer is the status as it is now; poll "
        "status_url until it is final. Cancelling again is harmless.",
        "tags": ["requests"],
        "parameters": [REQUEST_ID],
        "responses": {
            "202": _json(
                "Status", "Cancel recorded; the status now", {"cancelling": ex.cancelling()}
            ),
            **_errors(ex, *REQUEST_ERRORS, "409"),
            "409": _error(ex, "409", "The request is final already; its status is named"),
        },
    }


def _delete(ex: Examples) -> dict[str, Any]:
    return {
        "summary": "Delete a finished request: its stored images and CSVs, then its records",
        "description": "Only a final request (cancelled included) can be deleted; cancel an "
        "unfinished one first. Afterwards the request and its outputs answer 404.",
        "tags": ["requests"],
        "parameters": [REQUEST_ID],
        "responses": {
            "204": {"description": "Deleted"},
            **_errors(ex, *REQUEST_ERRORS, "409"),
            "409": _error(ex, "409", "The request is unfinished; cancel it first", "unfinished"),
        },
    }


def _images(ex: Examples) -> dict[str, Any]:
    return {
        "summary": "A request's images, one page at a time, optionally of one status",
        "description": "Each image with the line of the uploaded file its product is on, its "
        "position among the product's URLs, and its result. `?status=failed` lists what "
        "failed and why, any time, final or not.",
        "tags": ["requests"],
        "parameters": [
            REQUEST_ID,
            {
                "name": "status",
                "in": "query",
                "schema": {"type": "string", "enum": IMAGE_STATUSES},
                "description": "only images of this status",
            },
            *_paging(MAX_PER_PAGE, DEFAULT_IMAGES_PER_PAGE),
        ],
        "responses": {
            "200": _json(
                "ImagePage",
                "A page of images, in file order",
                {"?status=failed": ex.failed_images(), "all, ?per_page=1": ex.all_images()},
            ),
            **_errors(ex, "400", *REQUEST_ERRORS),
            "400": _error(
                ex, "400", "Not an image status, or a bad page or per_page", "bad status"
            ),
        },
    }


def _thumbnail(ex: Examples) -> dict[str, Any]:
    return {
        "summary": "A small JPEG of an output image, for pages",
        "description": "The output image fitted inside 160x160 (never enlarged), JPEG "
        "quality 70, made on first request and cached with the request (deleting the request "
        "deletes it). Counted in the images' rate limit (MEDIA_RATE_LIMIT_*), not the API's. "
        "404 when the image has no output (pending, failed, cancelled) or its output would "
        "decode to more than 16 million pixels (the output_url still serves it).",
        "tags": ["outputs"],
        "parameters": [
            REQUEST_ID,
            {
                "name": "image",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": r"^[1-9][0-9]*-[1-9][0-9]*\.jpg$"},
                "description": "<row>-<position>.jpg, both numbered from 1 (a product's "
                "`row`, an image's `position`), e.g. 1-1.jpg",
            },
        ],
        "responses": {
            "200": {
                "description": "The thumbnail (with an ETag; Cache-Control private when "
                "API keys are on, public otherwise)",
                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            },
            "304": {"description": "Unchanged (If-None-Match matched its ETag)"},
            **_errors(ex, *REQUEST_ERRORS),
            "404": _error(
                ex, "404", "No such request or image, no output yet, or too large for a thumbnail"
            ),
        },
    }


def _failures_csv(ex: Examples) -> dict[str, Any]:
    return {
        "summary": "A request's failed images as CSV, for a spreadsheet",
        "description": f"Columns {', '.join(FAILURE_COLUMNS)}: one row per failed "
        "image, `Line` being the line of the uploaded file. Available any time, final or "
        "not (it lists what has failed so far).",
        "tags": ["requests"],
        "parameters": [REQUEST_ID],
        "responses": {
            "200": _text("text/csv", "CSV", ex.failures_csv()),
            **_errors(ex, *REQUEST_ERRORS),
        },
    }


def _output_csv(ex: Examples) -> dict[str, Any]:
    return {
        "summary": "The output CSV: input columns plus Output Image Urls",
        "description": "Output URLs line up with the input URLs; a failed image leaves an "
        "empty slot.",
        "tags": ["requests"],
        "parameters": [REQUEST_ID],
        "responses": {
            "200": _text("text/csv", "CSV", ex.output_csv()),
            **_errors(ex, *REQUEST_ERRORS, "409"),
            "409": _error(
                ex, "409", "The request is not final yet, or has no output CSV", "not final"
            ),
        },
    }


def _media(ex: Examples) -> dict[str, Any]:
    return {
        "summary": "An output image (local storage only)",
        "description": "The output_url of an image when the storage is local files; S3 and "
        "other storages serve their own URLs.",
        "tags": ["outputs"],
        "parameters": [
            {
                "name": "key",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": "e.g. " + ex.media(0, 0).split("/media/", 1)[1],
            }
        ],
        "responses": {
            "200": {
                "description": "The image, in its request's format",
                "content": {
                    CONTENT_TYPES[f]: {"schema": {"type": "string", "format": "binary"}}
                    for f in FORMATS
                },
            },
            **_errors(ex, "401", "404", "429"),
            "404": _error(ex, "404", "No such image, or not visible to this API key", "no image"),
        },
    }


def _service(ex: Examples) -> dict[str, Any]:
    def served(
        summary: str, operation_id: str, description: str, ctype: str, type_: str
    ) -> dict[str, Any]:
        """A page or this document: public, so its only error is the rate limit's."""
        return {
            "summary": summary,
            "tags": ["service"],
            "operationId": operation_id,
            "responses": {
                "200": {
                    "description": description,
                    "content": {ctype: {"schema": {"type": type_}}},
                },
                **_errors(ex, "429"),
            },
        }

    def html(summary: str, operation_id: str) -> dict[str, Any]:
        return served(summary, operation_id, "HTML", "text/html", "string")

    return {
        "/health": {
            "get": {
                "summary": "Components and Dask workers; never rate limited or keyed",
                "tags": ["service"],
                "operationId": "health",
                "responses": {
                    "200": _json("Health", "OK", {"ok": ex.health()}),
                    "503": _json(
                        "Health",
                        "A component is failing: see failing",
                        {"storage failing": ex.health("storage")},
                    ),
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": served(
                "This document",
                "openapi",
                f"OpenAPI {OPENAPI_VERSION}",
                "application/json",
                "object",
            )
        },
        "/docs": {"get": html("This document, rendered, with a try-it form", "docs")},
        "/": {"get": html("The upload page", "page")},
    }


def _webhooks(ex: Examples) -> dict[str, Any]:
    def header(name: str, required: bool, description: str, example: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "header",
            "required": required,
            "schema": {"type": "string"},
            "description": description,
            "example": example,
        }

    return {
        "requestCompleted": {
            "post": {
                "summary": "A request is final: POSTed to its webhook_url (else WEBHOOK_URL)",
                "description": "One event per finished request (completed, "
                "completed_with_errors, failed or cancelled), signed as "
                "[Standard Webhooks](https://www.standardwebhooks.com/) say: verify it with "
                "any Standard Webhooks library and WEBHOOK_SECRET, and deduplicate on "
                "`webhook-id` (delivery is at least once). Answer any 2xx to accept. "
                "Connection errors, timeouts, 429 and 5xx are retried after each delay of "
                "WEBHOOK_RETRY_SCHEDULE (jittered), or after your Retry-After when longer; "
                "3xx (not followed) and other 4xx give up at once. The status's `webhook` "
                "shows the delivery and its attempts. With NATS_URL set, the same JSON (the "
                "same bytes: keys sorted, no spaces) is published on NATS_SUBJECT (default "
                "`images.request.completed`), without these headers; core NATS is at most "
                "once.",
                "operationId": "requestCompleted",
                "tags": ["webhooks"],
                "parameters": [
                    header(
                        "webhook-id",
                        True,
                        "msg_<request id>: the same on every retry; deduplicate on it",
                        f"msg_{EXAMPLE_ID}",
                    ),
                    header(
                        "webhook-timestamp",
                        True,
                        "Unix seconds of this attempt; refuse one more than 5 minutes away",
                        "1746091802",
                    ),
                    header(
                        "webhook-signature",
                        False,
                        'v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}"> '
                        "keyed with WEBHOOK_SECRET (base64 after whsec_); absent when the "
                        "server has no WEBHOOK_SECRET",
                        "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
                    ),
                    header("User-Agent", True, "identifies the sender", "imagepipe-webhook/1"),
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _ref("WebhookEvent"),
                            "examples": {
                                "completed_with_errors": {
                                    "summary": "One image of three failed",
                                    "value": ex.event(),
                                }
                            },
                        }
                    },
                },
                "responses": {
                    "2XX": {"description": "Accepted: the delivery is done"},
                    "429": {"description": "Retried later (after Retry-After when longer)"},
                    "5XX": {"description": "Retried later (after Retry-After when longer)"},
                    "default": {"description": "3xx or another 4xx: the delivery fails at once"},
                },
            }
        }
    }


def _alias(main: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """An older route: the main operation's parameters and answers, without its prose
    and examples, deprecated and pointing at it."""
    alias = {
        "summary": f"Alias of {method.upper()} {path}, kept for older clients",
        "description": f"The same as `{method.upper()} {path}` (operation "
        f"`{main['operationId']}`): same parameters, same answers. New clients use that.",
        "tags": main["tags"],
        "deprecated": True,
        "x-alias-of": main["operationId"],
    }
    for part in ("parameters", "requestBody", "responses"):
        if part in main:
            alias[part] = _without_examples(main[part])
    return alias


def _without_examples(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_examples(v) for k, v in value.items() if k not in ("example", "examples")
        }
    if isinstance(value, list):
        return [_without_examples(v) for v in value]
    return value


def document(base_url: str = "", defaults: OptionDefaults | None = None) -> dict[str, Any]:
    """`defaults`: the server's option defaults, to state their values (else named by setting)."""
    ex = Examples(base_url, defaults)
    upload = {**_upload(ex, defaults), "operationId": "upload"}
    status = {**_status(ex), "operationId": "getRequest"}
    upload_help = {**_upload_help(ex), "operationId": "uploadHelp"}
    main = {
        "upload": ("post", "/api/v1/upload", upload),
        "uploadHelp": ("get", "/api/v1/upload", upload_help),
        "getRequest": ("get", "/api/v1/requests/{request_id}", status),
    }
    aliases: dict[str, dict[str, Any]] = {}
    for (path, method), (operation_id, of) in ALIASES.items():
        main_method, main_path, operation = main[of]
        alias = _alias(operation, main_method, main_path)
        aliases.setdefault(path, {})[method] = {**alias, "operationId": operation_id}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "imagepipe",
            "version": "1",
            "description": "Upload a CSV of product image URLs; every image is downloaded, "
            "re-compressed and stored; poll the status; download the output CSV; get a "
            "webhook when it is done.",
        },
        "servers": [{"url": base_url or "/"}],
        "tags": [
            {"name": "requests", "description": "Upload, follow and manage requests"},
            {"name": "outputs", "description": "The stored images"},
            {"name": "service", "description": "Health, this document, the pages"},
            {"name": "webhooks", "description": "What the service sends you"},
        ],
        "paths": {
            "/api/v1/upload": {"post": upload, "get": upload_help},
            "/api/v1/requests": {"get": {**_list(ex), "operationId": "listRequests"}},
            "/api/v1/requests/{request_id}": {
                "get": status,
                "delete": {**_delete(ex), "operationId": "deleteRequest"},
            },
            "/api/v1/requests/{request_id}/cancel": {
                "post": {**_cancel(ex), "operationId": "cancelRequest"}
            },
            "/api/v1/requests/{request_id}/images": {
                "get": {**_images(ex), "operationId": "listImages"}
            },
            "/api/v1/requests/{request_id}/failures.csv": {
                "get": {**_failures_csv(ex), "operationId": "failuresCsv"}
            },
            "/api/v1/requests/{request_id}/thumbnails/{image}": {
                "get": {**_thumbnail(ex), "operationId": "thumbnail"}
            },
            "/api/v1/output/{request_id}.csv": {
                "get": {**_output_csv(ex), "operationId": "outputCsv"}
            },
            "/media/{key}": {"get": {**_media(ex), "operationId": "media"}},
            **_service(ex),
            **aliases,
        },
        "webhooks": _webhooks(ex),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "When API_KEYS is set",
                },
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{}, {"bearer": []}, {"apiKey": []}],
    }

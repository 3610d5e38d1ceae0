"""The OpenAPI 3 document of the HTTP API, served at /api/v1/openapi.json.

Written by hand next to the routes it describes; a test validates it, and a
schemathesis run checks the live app against it (no 5xx, no response that
breaks it).
"""

from __future__ import annotations

from typing import Any

from api.requests import DEFAULT_LIST_PER_PAGE, MAX_LIST_PAGE, MAX_LIST_PER_PAGE
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


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _errors(*codes: str, meanings: dict[str, str] | None = None) -> dict[str, Any]:
    """Error responses; `meanings` says what a code means on this route, when it differs."""
    ref = {"$ref": "#/components/schemas/Error"}
    return {
        c: {
            "description": (meanings or {}).get(c, ERROR_CODES[c]),
            "content": {"application/json": {"schema": ref}},
        }
        for c in codes
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": ref}}}}


REQUEST_ID = {
    "name": "request_id",
    "in": "path",
    "required": True,
    "description": "The id returned by the upload (32 hex characters)",
    "schema": {"type": "string"},
}
TIME = _nullable({"type": "string", "format": "date-time"})
REQUEST_STATUSES = [s.value for s in RequestStatus]
STATUS_MEANINGS = (
    "pending: recorded, not yet taken by a driver; queued: a driver owns it and waits for "
    "room on the cluster; processing: some of its images are being processed; completed, "
    "completed_with_errors (some images failed), failed (the request as a whole) and "
    "cancelled are final."
)

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["title"],
        "properties": {
            "title": {"type": "string"},
            "description": {"type": "string"},
            "row": _nullable({"type": "integer", "description": "1-based CSV line"}),
            "column": _nullable({"type": "string"}),
            "retry_after": {"type": "integer"},
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
            "status_url": {"type": "string", "format": "uri"},
            "output_csv_url": {"type": "string", "format": "uri"},
            "total_products": {"type": "integer", "minimum": 1},
            "total_images": {"type": "integer", "minimum": 1},
            "options": {"$ref": "#/components/schemas/Options"},
        },
    },
    "Image": {
        "type": "object",
        "required": ["input_url", "status", "output_url", "error", "bytes_in", "bytes_out"],
        "properties": {
            "input_url": {"type": "string"},
            "status": {
                "type": "string",
                "enum": [s.value for s in ImageStatus],
                "description": "cancelled: its request was cancelled before it had a result",
            },
            "output_url": _nullable(
                {"type": "string", "description": "ends with the extension of options.format"}
            ),
            "error": _nullable({"type": "string"}),
            "bytes_in": _nullable({"type": "integer"}),
            "bytes_out": _nullable({"type": "integer"}),
        },
    },
    "Product": {
        "type": "object",
        "required": ["row", "s_no", "product_name", "images"],
        "properties": {
            "row": {"type": "integer", "minimum": 1},
            "s_no": {"type": "string"},
            "product_name": {"type": "string"},
            "images": {"type": "array", "items": {"$ref": "#/components/schemas/Image"}},
        },
    },
    "Status": {
        "type": "object",
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
            "status": {"type": "string", "enum": REQUEST_STATUSES, "description": STATUS_MEANINGS},
            "options": _nullable(
                {
                    "allOf": [{"$ref": "#/components/schemas/Options"}],
                    "description": "null only for a request recorded before options existed "
                    "(it came out as the server's defaults said)",
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
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "created_at": TIME,
            "started_at": TIME,
            "updated_at": TIME,
            "completed_at": TIME,
            "cancel_requested_at": _nullable(
                {"type": "string", "format": "date-time", "description": "when a cancel was asked"}
            ),
            "error": _nullable({"type": "string"}),
            "waiting_reason": _nullable(
                {
                    "type": "string",
                    "description": "why an unfinished request is not moving (a backend out "
                    "of service); null once it moves again",
                }
            ),
            "status_url": {"type": "string"},
            "products_url": {"type": "string"},
            "cancel_url": _nullable(
                {"type": "string", "description": "POST here to cancel; null once final"}
            ),
            "output_csv_url": _nullable({"type": "string"}),
            "dashboard_url": _nullable({"type": "string", "description": "the Dask dashboard"}),
            "webhook": _nullable({"type": "object", "additionalProperties": True}),
            "products": {"type": "array", "items": {"$ref": "#/components/schemas/Product"}},
            "page": {
                "type": "object",
                "required": ["page", "per_page", "total_products", "next"],
                "properties": {
                    "page": {"type": "integer"},
                    "per_page": {"type": "integer"},
                    "total_products": {"type": "integer"},
                    "next": _nullable({"type": "string"}),
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
                "items": {"$ref": "#/components/schemas/Status"},
            },
            "page": {
                "type": "object",
                "required": ["page", "per_page", "total", "next"],
                "properties": {
                    "page": {"type": "integer", "minimum": 1},
                    "per_page": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_PER_PAGE},
                    "total": {"type": "integer", "minimum": 0, "description": "matching in all"},
                    "next": _nullable({"type": "string", "description": "the next page's URL"}),
                },
            },
        },
    },
    "Health": {
        "type": "object",
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


def _upload(defaults: OptionDefaults | None) -> dict[str, Any]:
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
                    }
                }
            },
        },
        "responses": {
            "202": _json("#/components/schemas/Accepted", "Accepted; poll status_url"),
            **_errors("400", "401", "411", "413", "415", "422", "429", "503"),
        },
    }


def _status() -> dict[str, Any]:
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
            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
        },
    ]
    return {
        "summary": "Progress counters; per-product results when paged",
        "tags": ["requests"],
        "parameters": [REQUEST_ID, *page_params],
        "responses": {
            "200": _json("#/components/schemas/Status", "The request's status"),
            **_errors("400", "401", "404", "429", "503"),
        },
    }


def _list() -> dict[str, Any]:
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
            {
                "name": "page",
                "in": "query",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_PAGE, "default": 1},
            },
            {
                "name": "per_page",
                "in": "query",
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_LIST_PER_PAGE,
                    "default": DEFAULT_LIST_PER_PAGE,
                },
            },
        ],
        "responses": {
            "200": _json("#/components/schemas/RequestList", "A page of requests"),
            **_errors("400", "401", "429", "503"),
        },
    }


def _cancel() -> dict[str, Any]:
    return {
        "summary": "Cancel an unfinished request",
        "description": "The cancel is recorded and the request ends `cancelled` shortly: "
        "nothing new starts, batches already running may finish, and the images left "
        "without a result end `cancelled`. The answer is the status as it is now; poll "
        "status_url until it is final. Cancelling again is harmless.",
        "tags": ["requests"],
        "parameters": [REQUEST_ID],
        "responses": {
            "202": _json("#/components/schemas/Status", "Cancel recorded; the status now"),
            **_errors(
                "401",
                "404",
                "409",
                "429",
                "503",
                meanings={"409": "The request is final already; its status is named"},
            ),
        },
    }


def _delete() -> dict[str, Any]:
    return {
        "summary": "Delete a finished request: its stored images and CSVs, then its records",
        "description": "Only a final request (cancelled included) can be deleted; cancel an "
        "unfinished one first. Afterwards the request and its outputs answer 404.",
        "tags": ["requests"],
        "parameters": [REQUEST_ID],
        "responses": {
            "204": {"description": "Deleted"},
            **_errors(
                "401",
                "404",
                "409",
                "429",
                "503",
                meanings={"409": "The request is unfinished; cancel it first"},
            ),
        },
    }


def document(base_url: str = "", defaults: OptionDefaults | None = None) -> dict[str, Any]:
    """`defaults`: the server's option defaults, to state their values (else named by setting)."""
    upload, status = _upload(defaults), _status()
    output = {
        "summary": "The output CSV: input columns plus Output Image Urls",
        "tags": ["requests"],
        "parameters": [REQUEST_ID],
        "responses": {
            "200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
            **_errors(
                "401",
                "404",
                "409",
                "429",
                "503",
                meanings={"409": "The request is not final yet, or has no output CSV"},
            ),
        },
    }
    media = {
        "summary": "An output image (local storage only)",
        "tags": ["outputs"],
        "parameters": [
            {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {
            "200": {
                "description": "The image, in its request's format",
                "content": {
                    CONTENT_TYPES[f]: {"schema": {"type": "string", "format": "binary"}}
                    for f in FORMATS
                },
            },
            **_errors("401", "404", "429"),
        },
    }
    html = {
        "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
        **_errors("429"),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "imagepipe",
            "version": "1",
            "description": "Upload a CSV of product image URLs; every image is downloaded, "
            "re-compressed and stored; poll the status; download the output CSV.",
        },
        "servers": [{"url": base_url or "/"}],
        "tags": [{"name": "requests"}, {"name": "outputs"}, {"name": "service"}],
        "paths": {
            "/api/v1/upload": {"post": {**upload, "operationId": "upload"}},
            "/api/images/upload": {
                "post": {**upload, "operationId": "uploadLegacy", "deprecated": True}
            },
            "/api/v1/requests": {"get": {**_list(), "operationId": "listRequests"}},
            "/api/v1/requests/{request_id}": {
                "get": {**status, "operationId": "getRequest"},
                "delete": {**_delete(), "operationId": "deleteRequest"},
            },
            "/api/v1/requests/{request_id}/cancel": {
                "post": {**_cancel(), "operationId": "cancelRequest"}
            },
            "/api/v1/status/{request_id}": {"get": {**status, "operationId": "status"}},
            "/api/status/{request_id}": {
                "get": {**status, "operationId": "statusLegacy", "deprecated": True}
            },
            "/api/v1/output/{request_id}.csv": {"get": {**output, "operationId": "outputCsv"}},
            "/media/{key}": {"get": {**media, "operationId": "media"}},
            "/health": {
                "get": {
                    "summary": "Components and Dask workers; never rate limited or keyed",
                    "tags": ["service"],
                    "operationId": "health",
                    "responses": {
                        "200": _json("#/components/schemas/Health", "OK"),
                        "503": _json(
                            "#/components/schemas/Health", "A component is failing: see failing"
                        ),
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "tags": ["service"],
                    "operationId": "openapi",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_errors("429"),
                    },
                }
            },
            "/docs": {
                "get": {
                    "summary": "This document, rendered",
                    "tags": ["service"],
                    "operationId": "docs",
                    "responses": html,
                }
            },
            "/": {
                "get": {
                    "summary": "The upload page",
                    "tags": ["service"],
                    "operationId": "page",
                    "responses": html,
                }
            },
        },
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

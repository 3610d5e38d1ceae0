"""The OpenAPI 3 document of the HTTP API, served at /api/v1/openapi.json.

Written by hand next to the routes it describes; a test validates it, and a
schemathesis run checks the live app against it (no 5xx, no response that
breaks it).
"""

from __future__ import annotations

from typing import Any

from api.requests import DEFAULT_LIST_PER_PAGE, MAX_LIST_PAGE, MAX_LIST_PER_PAGE
from pipeline.models import ImageStatus, RequestStatus

ERROR_CODES = {
    "400": "Malformed request (bad multipart body, missing 'file' field, bad query parameter)",
    "401": "API key required or invalid (only when API_KEYS is set)",
    "404": "No such request, or not visible to this API key",
    "409": "The request's state does not allow this (the error names its status)",
    "411": "A body without Content-Length from a server that cannot delimit it",
    "413": "Upload, rows or URLs over the limits",
    "415": "Not multipart/form-data, or a compressed body",
    "422": "Invalid CSV (the error names the line and column) or invalid webhook_url",
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
        ],
        "properties": {
            "request_id": {"type": "string"},
            "status": {"type": "string", "enum": ["pending"]},
            "status_url": {"type": "string", "format": "uri"},
            "output_csv_url": {"type": "string", "format": "uri"},
            "total_products": {"type": "integer", "minimum": 1},
            "total_images": {"type": "integer", "minimum": 1},
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
            "output_url": _nullable({"type": "string"}),
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
        ],
        "properties": {
            "request_id": {"type": "string"},
            "status": {"type": "string", "enum": REQUEST_STATUSES, "description": STATUS_MEANINGS},
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


def _upload() -> dict[str, Any]:
    return {
        "summary": "Upload a product CSV; processing starts in the background",
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


def document(base_url: str = "") -> dict[str, Any]:
    upload, status = _upload(), _status()
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
                "description": "JPEG",
                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
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

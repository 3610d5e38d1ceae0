"""The OpenAPI 3 document of the HTTP API, served at /api/v1/openapi.json.

Written by hand next to the routes it describes; a test validates it, and a
schemathesis run checks the live app against it (no 5xx, no response that
breaks it).
"""

from __future__ import annotations

from typing import Any

ERROR_CODES = {
    "400": "Malformed request (bad multipart body, missing 'file' field, bad query parameter)",
    "401": "API key required or invalid (only when API_KEYS is set)",
    "404": "No such request, or not visible to this API key",
    "409": "The request is not final yet, or failed without an output CSV",
    "411": "A body without Content-Length from a server that cannot delimit it",
    "413": "Upload, rows or URLs over the limits",
    "415": "Not multipart/form-data, or a compressed body",
    "422": "Invalid CSV (the error names the line and column) or invalid webhook_url",
    "429": "Over the rate limit; see Retry-After",
    "503": "A backend (storage or records) is failing; retry",
}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def _errors(*codes: str) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/Error"}
    return {
        c: {"description": ERROR_CODES[c], "content": {"application/json": {"schema": ref}}}
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
            "status": {"type": "string", "enum": ["pending", "done", "failed"]},
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
            "status": {
                "type": "string",
                "enum": ["pending", "processing", "completed", "completed_with_errors", "failed"],
            },
            "total_products": {"type": "integer"},
            "total_images": {"type": "integer"},
            "processed_images": {
                "type": "integer",
                "description": "images with a result, done or failed",
            },
            "succeeded_images": {"type": "integer"},
            "failed_images": {"type": "integer"},
            "progress": {"type": "number", "minimum": 0, "maximum": 100},
            "created_at": TIME,
            "started_at": TIME,
            "updated_at": TIME,
            "completed_at": TIME,
            "error": _nullable({"type": "string"}),
            "status_url": {"type": "string"},
            "products_url": {"type": "string"},
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
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}},
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


def document(base_url: str = "") -> dict[str, Any]:
    upload, status = _upload(), _status()
    output = {
        "summary": "The output CSV: input columns plus Output Image Urls",
        "tags": ["requests"],
        "parameters": [REQUEST_ID],
        "responses": {
            "200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
            **_errors("401", "404", "409", "429", "503"),
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
                    "responses": {"200": _json("#/components/schemas/Health", "OK")},
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

"""Every storage key a request uses, built in one place.

A request's objects all live under `requests/{id}/`, so deleting a request is
deleting that prefix, and only `requests/*/images/*` is ever public. Output
image keys are deterministic: a task that runs twice writes the same object.
"""

from __future__ import annotations

import re

PUBLIC_KEY_PATTERN = "requests/*/images/*"
# What the local media route serves: output images only, never a request's CSVs.
OUTPUT_IMAGE_KEY = re.compile(
    r"^requests/(?P<request_id>[0-9a-f]{32})/images/\d{7}-\d{3}\.(?P<extension>jpg|webp|avif)$"
)


def request_prefix(request_id: str) -> str:
    """The folder holding every object of the request (with its trailing slash)."""
    if not request_id or "/" in request_id or request_id in (".", ".."):
        raise ValueError(f"not a request id: {request_id!r}")
    return f"requests/{request_id}/"


def input_csv_key(request_id: str) -> str:
    return f"{request_prefix(request_id)}input.csv"


def output_csv_key(request_id: str) -> str:
    return f"{request_prefix(request_id)}output.csv"


def manifest_key(request_id: str) -> str:
    return f"{request_prefix(request_id)}manifest.parquet"


def cancel_marker_key(request_id: str) -> str:
    """Present once the request is cancelled: its tasks start no more downloads."""
    return f"{request_prefix(request_id)}cancelled"


def output_key(request_id: str, row: int, position: int, extension: str = "jpg") -> str:
    """Deterministic: a task that runs twice writes the same object."""
    return f"{request_prefix(request_id)}images/{row:07d}-{position:03d}.{extension}"


def thumbnail_key(request_id: str, row: int, position: int) -> str:
    """Where an image's thumbnail is cached (made by the API on first request)."""
    return f"{request_prefix(request_id)}thumbs/{row:07d}-{position:03d}.jpg"

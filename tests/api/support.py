"""What the API tests share: a recording runner, sample input, upload helpers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import falcon.testing
from urllib3 import encode_multipart_formdata

from api.app import create_app
from pipeline.records.base import RecordStore
from pipeline.settings import Settings
from pipeline.storage import Storage

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
GOOD_CSV = (
    b"S. No.,Product Name,Input Image Urls\n"
    b'1,Trail Shoe,"https://img.example.com/a.jpg, https://img.example.com/b.jpg"\n'
    b"2,Mug,https://img.example.com/c.png\n"
)


class RecordingRunner:
    """The driver as the API sees it: records what it was asked to do, does nothing."""

    def __init__(self):
        self.submitted: list[str] = []
        self.cancelled: list[str] = []

    def submit(self, request_id: str) -> None:
        self.submitted.append(request_id)

    def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)


class FakeMonotonic:
    """The rate limiter's clock, moved by hand: no test sleeps."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_client(
    settings: Settings, store: RecordStore, storage: Storage, runner: RecordingRunner, **kw
) -> falcon.testing.TestClient:
    ids = iter(f"{n:032x}" for n in range(1, 100_000))
    kw.setdefault("clock", lambda: T0)
    app = create_app(settings, store, storage, runner, new_id=lambda: next(ids), **kw)
    return falcon.testing.TestClient(app)


def multipart(fields: dict | list) -> tuple[bytes, dict[str, str]]:
    body, content_type = encode_multipart_formdata(fields)
    return body, {"Content-Type": content_type}


def upload(
    client,
    data: bytes,
    path: str = "/api/v1/upload",
    *,
    filename: str = "products.csv",
    headers: dict[str, str] | None = None,
    **fields,
):
    """What `curl -F file=@products.csv URL` sends."""
    body, form_headers = multipart({"file": (filename, data, "text/csv"), **fields})
    return client.simulate_post(path, body=body, headers=form_headers | (headers or {}))


def stored_files(settings: Settings) -> list[Path]:
    """Every object the (local) storage holds."""
    root = settings.data_dir / "objects"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

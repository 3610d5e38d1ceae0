"""Plain values shared by every part of the pipeline.

Everything here is small, immutable and picklable, because these values
travel between the API process, the Dask driver and the workers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, overload

from pipeline.options import DEFAULT_OPTIONS, OutputOptions


class RequestStatus(enum.StrEnum):
    """A request's life: pending -> queued -> processing -> a final status.

    `pending`: recorded, not yet taken by a driver (no process holds its lease);
    `queued`: a driver owns it and waits for room on the cluster (staging, or no
    batch of it submitted yet); `processing`: some of its batches have run.
    `cancelled` is final, like the other three.
    """

    PENDING = "pending"
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {
        RequestStatus.COMPLETED,
        RequestStatus.COMPLETED_WITH_ERRORS,
        RequestStatus.FAILED,
        RequestStatus.CANCELLED,
    }
)
UNFINISHED_STATUSES = frozenset(set(RequestStatus) - FINAL_STATUSES)


class ImageStatus(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # its request was cancelled before it had a result


@dataclass(frozen=True, slots=True)
class Product:
    """One validated CSV row. `row` is its 0-based position in input order; `line`
    the line of the uploaded file where it starts (the header is line 1), which is
    how people name it: blank lines and quoted line breaks make the two differ."""

    row: int
    serial: str
    name: str
    urls: tuple[str, ...]
    line: int = 0  # 0: not known (made by hand, not parsed)


@dataclass(frozen=True, slots=True)
class ImageItem:
    """One image to process: the unit the records and the manifest share.

    A URL that appears more than once in a request is fetched once: its first
    slot carries the others in `copies`, and each of those names it in `copy_of`
    (both as (row, position)); a copy's result is its first slot's.
    """

    row: int
    position: int
    serial: str
    product_name: str
    input_url: str
    copies: tuple[tuple[int, int], ...] = ()
    copy_of: tuple[int, int] | None = None
    line: int = 0  # the product's line in the uploaded file (Product.line)


@dataclass(frozen=True, slots=True)
class ImageResult:
    """What processing one image produced. A failure is data, not an exception."""

    row: int
    position: int
    ok: bool
    output_key: str | None = None
    error: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class NewRequest:
    request_id: str
    created_at: datetime
    total_rows: int
    total_images: int
    source_name: str = ""
    webhook_url: str | None = None
    # Short SHA-256 hex of the API key that made the request (never the key); None
    # when the API runs without keys. Only that key may read the request.
    owner: str | None = None
    # Resolved when the request is accepted, so the server's defaults changing later
    # does not change how it comes out.
    options: OutputOptions = DEFAULT_OPTIONS


@dataclass(frozen=True, slots=True)
class RequestRecord:
    request_id: str
    status: RequestStatus
    total_rows: int
    total_images: int
    processed_images: int
    failed_images: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    source_name: str = ""
    webhook_url: str | None = None
    output_key: str | None = None
    error: str | None = None
    webhook: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None  # see NewRequest.owner
    cancelled_images: int = 0
    cancel_requested_at: datetime | None = None
    # The driving process's lease (see records/base.py): who, until when, last renewal.
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    heartbeat_at: datetime | None = None
    # Why an unfinished request is not moving (a backend out of service); cleared
    # when it moves again or finishes.
    waiting_reason: str | None = None
    # How its images come out (see NewRequest.options); None for a request recorded
    # before options existed: it comes out as the server's defaults say.
    options: OutputOptions | None = None

    @property
    def succeeded_images(self) -> int:
        return self.processed_images - self.failed_images

    @property
    def progress(self) -> float:
        """Percent of images with a result (success or failure)."""
        if self.total_images == 0:
            return 100.0
        return round(100.0 * self.processed_images / self.total_images, 2)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    row: int
    position: int
    serial: str
    product_name: str
    input_url: str
    status: ImageStatus
    output_key: str | None = None
    error: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    width: int | None = None
    height: int | None = None
    line: int | None = None  # None: recorded before lines were kept

    @property
    def file_line(self) -> int:
        """The product's line in the uploaded file: how people name it. For records
        from before lines were kept, the line it has when no blank line or quoted
        line break comes before it."""
        return self.line or self.row + 2


@dataclass(frozen=True, slots=True)
class ReasonCount:
    """A group of failure reasons (`failures.reason_group`), how many, one example."""

    reason: str
    count: int
    example: str


@dataclass(frozen=True, slots=True)
class Counters:
    processed_images: int  # images with a result: done or failed
    failed_images: int
    cancelled_images: int = 0  # images left without a result by a cancel


def image_items(products: list[Product] | tuple[Product, ...]) -> list[ImageItem]:
    """Flatten products into images, in input order, each URL's repeats as its copies.

    URLs are the same when their text is (after the CSV's own trimming): two
    spellings of one address are fetched twice, which is only slower.
    """
    first: dict[str, int] = {}  # URL -> index in `items` of its first slot
    copies: dict[int, list[tuple[int, int]]] = {}
    items: list[ImageItem] = []
    for p in products:
        for position, url in enumerate(p.urls):
            slot = (p.row, position)
            leader = first.setdefault(url, len(items))
            copy_of = None
            if leader != len(items):
                copies.setdefault(leader, []).append(slot)
                copy_of = (items[leader].row, items[leader].position)
            items.append(
                ImageItem(p.row, position, p.serial, p.name, url, copy_of=copy_of, line=p.line)
            )
    for index, slots in copies.items():
        items[index] = replace(items[index], copies=tuple(slots))
    return items


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: None) -> None: ...
@overload
def iso(value: datetime | None) -> str | None: ...
def iso(value: datetime | None) -> str | None:
    """UTC timestamps as ISO 8601 with a Z, the form every response uses."""
    return value.isoformat().replace("+00:00", "Z") if value else None

"""Accept a CSV as a new request: validate, store the input, record it.

The one way in, shared by the HTTP upload, the CLI and the notebook, so a
CSV is judged the same everywhere. Nothing is stored or recorded unless the
whole file is valid; the input is stored before the record, so a record never
points at a missing CSV, and removed again when the record cannot be written.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from pipeline.csv_input import CsvLimits, parse_products
from pipeline.errors import StorageError
from pipeline.keys import input_csv_key
from pipeline.models import NewRequest
from pipeline.options import DEFAULT_OPTIONS, OutputOptions
from pipeline.records.base import RecordStore
from pipeline.storage import Storage


def new_request_id() -> str:
    # 128 random bits: unguessable, so an id works as a capability to read a request.
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Accepted:
    request_id: str
    total_products: int
    total_images: int
    options: OutputOptions


def accept_csv(
    data: bytes,
    *,
    store: RecordStore,
    storage: Storage,
    limits: CsvLimits,
    now: datetime,
    request_id: str,
    source_name: str = "",
    webhook_url: str | None = None,
    owner: str | None = None,
    options: OutputOptions = DEFAULT_OPTIONS,
) -> Accepted:
    """Raises CsvError / PayloadTooLarge (InputError) for a bad file, having changed nothing."""
    products = parse_products(data, limits)
    total_images = sum(len(p.urls) for p in products)
    key = input_csv_key(request_id)
    storage.put(key, data)
    try:
        store.create_request(
            NewRequest(
                request_id=request_id,
                created_at=now,
                total_rows=len(products),
                total_images=total_images,
                source_name=source_name,
                webhook_url=webhook_url,
                owner=owner,
                options=options,
            )
        )
    except BaseException:
        # Not recorded, so nothing would ever delete it (retention goes by records).
        with contextlib.suppress(StorageError):
            storage.delete(key)
        raise
    return Accepted(request_id, len(products), total_images, options)

"""Accept a CSV as a new request: validate, store the input, record it.

The one way in, shared by the HTTP upload, the CLI and the notebook, so a
CSV is judged the same everywhere. Nothing is stored or recorded unless the
whole file is valid; the input is stored before the record, so a record never
points at a missing CSV, and taken back when the record cannot be written.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from pipeline.csv_input import CsvLimits, parse_products
from pipeline.errors import StorageError
from pipeline.keys import input_csv_key
from pipeline.models import NewRequest, RequestStatus
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
        _withdraw(store, storage, request_id, key, now)
        raise
    return Accepted(request_id, len(products), total_images, options)


WITHDRAWN = "the upload was refused: the record store failed while recording it"


def _withdraw(
    store: RecordStore, storage: Storage, request_id: str, key: str, now: datetime
) -> None:
    """Take back what was kept of an upload its client is told failed.

    The CSV would be an orphan (retention goes by records). A store can fail
    after writing (a MongoDB insert whose answer was lost): a record written
    anyway is ended `failed`, so no process runs a request its uploader was
    told was refused; where the store cannot even say, the missing CSV fails
    such a request at staging. Best effort: the store's error is what the
    client hears.
    """
    with contextlib.suppress(Exception):
        if store.get_request(request_id) is not None:
            store.finish(request_id, RequestStatus.FAILED, now, error=WITHDRAWN)
    with contextlib.suppress(StorageError):
        storage.delete(key)

"""A request's output CSV as stored: written when it finishes, rebuilt when missing.

The records are the truth; the stored CSV is a copy of them made at
completion. When it could not be written then (storage full or read-only) or
has gone since, it is rebuilt from the records on demand, streamed chunk by
chunk (a 100k-image CSV is never held in memory), and stored again on the way
when the storage takes it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import uuid
from collections.abc import Iterator
from typing import IO

from pipeline.csv_output import BOM, output_csv_rows, render_csv
from pipeline.errors import StorageError
from pipeline.keys import input_csv_key
from pipeline.records.base import RecordStore
from pipeline.storage import Storage

log = logging.getLogger(__name__)


def csv_chunks(store: RecordStore, storage: Storage, request_id: str) -> Iterator[bytes]:
    """The request's output CSV from its records, as UTF-8 chunks, with a byte order
    mark when the uploaded CSV had one."""
    rows = output_csv_rows(store.iter_images(request_id), storage.url)
    return render_csv(rows, bom=input_has_bom(storage, request_id))


def input_has_bom(storage: Storage, request_id: str) -> bool:
    """Whether the uploaded CSV starts with UTF-8's byte order mark.

    Excel on Windows saves "CSV UTF-8" with one, and without one opens a UTF-8
    file as the local code page (mojibake in every non-ASCII name); a file
    without one came from a tool that does not want it.
    """
    try:
        with storage.open(input_csv_key(request_id), "rb") as fh:
            return fh.read(len(BOM)) == BOM
    except (OSError, StorageError):
        return False  # the input is gone (deleted, storage failing): no mark


def write(store: RecordStore, storage: Storage, request_id: str, key: str) -> None:
    """Store the output CSV under `key`, whole or not at all (StorageError)."""
    storage.put_chunks(key, csv_chunks(store, storage, request_id))


class Rebuilt:
    """The output CSV rebuilt from the records, as a WSGI response body.

    Its first chunk is made on construction, so a record store that fails is an
    error answer, not a body cut off after its headers. Iterating it yields the
    chunks and writes each to a temporary object as well, moved under `key` once
    the last one is written; a storage error ends only the copy (logged), never
    the response. `close()`, which the server calls even when the client goes
    away midway, removes an unfinished copy.
    """

    def __init__(self, store: RecordStore, storage: Storage, request_id: str, key: str):
        self.storage = storage
        self.key = key
        self._chunks = csv_chunks(store, storage, request_id)
        self._first = next(self._chunks)  # the header row at least, always
        self._partial: str | None = f"{key}.partial-{uuid.uuid4().hex}"
        self._file: IO[bytes] | None = None
        try:
            self._file = storage.open(self._partial, "wb")
        except StorageError as exc:
            self._give_up(exc)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in itertools.chain((self._first,), self._chunks):
            self._copy(chunk)
            yield chunk
        self._store()

    def close(self) -> None:
        if self._partial is not None:
            self._give_up(None)

    def _copy(self, chunk: bytes) -> None:
        if self._file is None:
            return
        try:
            self._file.write(chunk)
        except OSError as exc:
            self._give_up(exc)

    def _store(self) -> None:
        if self._file is None or self._partial is None:
            return
        try:
            self._file.close()
            self._file = None
            self.storage.move(self._partial, self.key)
        except (OSError, StorageError) as exc:
            self._give_up(exc)
            return
        self._partial = None
        log.info("output CSV %s rebuilt from the records and stored again", self.key)

    def _give_up(self, exc: BaseException | None) -> None:
        """Stop copying and remove what was written; `exc` None: the client went away."""
        if exc is not None:
            log.warning(
                "output CSV %s served from the records but not stored again: %s", self.key, exc
            )
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._partial is not None:
            try:
                self.storage.delete(self._partial)
            except StorageError as error:
                log.warning("could not remove %s: %s", self._partial, error)
            self._partial = None

"""Removing a finished request: every object stored for it, then its records.

Used by the API's DELETE and, later, by a periodic retention sweep, so it knows
nothing of HTTP. The order matters: the objects go first and the records last,
so a failure midway leaves the record in place and the removal can simply be
run again (a prefix already gone is not an error). The other order would leave
objects nobody can find any more.
"""

from __future__ import annotations

from pipeline.errors import NotFinished, RequestNotFound
from pipeline.keys import request_prefix
from pipeline.records.base import RecordStore
from pipeline.storage import Storage


def remove_request(store: RecordStore, storage: Storage, request_id: str) -> None:
    """Remove a final request's objects, then its records.

    NotFinished (a Conflict) while the request is unfinished (nothing is removed: cancel it first);
    RequestNotFound for an unknown id; StorageError or RecordStoreError when a
    backend fails, after which running it again finishes the job.
    """
    record = store.get_request(request_id)
    if record is None:
        raise RequestNotFound(request_id)
    if not record.status.is_final:
        raise _still_running(request_id, str(record.status))
    storage.delete_prefix(request_prefix(request_id))
    if not store.delete_request(request_id):
        # Not expected (a final status never changes back); the record stays to retry with.
        current = store.get_request(request_id)
        raise _still_running(request_id, str(current.status if current else record.status))


def _still_running(request_id: str, status: str) -> NotFinished:
    return NotFinished(
        f"Request {request_id} is {status}; only a finished request can be deleted. "
        "Cancel it first, and delete it once its status is cancelled.",
        request_id=request_id,
        status=status,
    )

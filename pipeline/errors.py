"""The project's exception hierarchy.

Only whole-system failures are exceptions. A single image that cannot be
fetched or decoded is recorded as data (`ImageResult.error`), never raised
past the task that processed it. Third-party errors are wrapped at the
boundary with ``raise ... from exc`` so callers only need to know these.
"""

from __future__ import annotations

import errno


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(PipelineError):
    """A setting from the environment is missing or malformed."""


class InputError(PipelineError):
    """The caller's input is unusable. Mapped to a 4xx by the API."""

    status = 422
    title = "Invalid input"


class CsvError(InputError):
    """The uploaded CSV is invalid; names the row and column when it can.

    `row` is the 1-based line number of the CSV file (the header is line 1),
    which is what a person sees in a spreadsheet or editor.
    """

    title = "Invalid CSV"

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None):
        self.message = message
        self.row = row
        self.column = column
        where = []
        if row is not None:
            where.append(f"line {row}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class PayloadTooLarge(InputError):
    status = 413
    title = "Payload too large"


class RequestNotFound(PipelineError):
    def __init__(self, request_id: str):
        self.request_id = request_id
        super().__init__(f"no request with id {request_id!r}")


class NotReady(PipelineError):
    """The thing asked for exists but is not available yet (e.g. output CSV)."""


class Conflict(PipelineError):
    """The request is not in a state that allows this: cancelling a finished request,
    deleting an unfinished one. `status` is the request's status when it was refused."""

    def __init__(self, message: str, *, request_id: str, status: str, title: str = "Conflict"):
        self.request_id = request_id
        self.status = status
        self.title = title
        super().__init__(message)


class StorageError(PipelineError):
    """Reading or writing the object store failed."""


class RecordStoreError(PipelineError):
    """The record store (SQLite or MongoDB) failed."""


class FetchError(PipelineError):
    """One URL could not be fetched. Caught per image and recorded as its reason.

    `status` is the HTTP status the host answered, if it answered; `retry_after`
    the seconds its `Retry-After` asked for on a 429 or 503 (the per-host pause
    of `pipeline.hosts` honours them).
    """

    def __init__(
        self,
        reason: str,
        *,
        transient: bool = False,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        self.reason = reason
        self.transient = transient
        self.status = status
        self.retry_after = retry_after
        super().__init__(reason)


class ImageRejected(PipelineError):
    """The bytes are not an image this service can process. Recorded per image."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


# What a full, read-only or vanished disk says through a file object, where no
# storage method could wrap it (e.g. pyarrow writing a manifest).
_UNAVAILABLE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOTDIR}
)


def backend_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says a backend is out of service (the record store or the storage
    gone, full, read-only or unreachable) rather than that the work itself is bad.

    Work that failed this way may succeed once the backend returns, so it is left
    to be taken up again instead of being failed. A missing object is not one of
    these: an input that is gone stays gone.
    """
    if isinstance(exc, RecordStoreError | StorageError):
        return True
    return (
        isinstance(exc, OSError)
        and not isinstance(exc, FileNotFoundError)
        and exc.errno in _UNAVAILABLE_ERRNOS
    )

"""The project's exception hierarchy, in one tree.

Only whole-system failures are exceptions. A single image that cannot be
fetched or decoded is recorded as data (`ImageResult.error`), never raised
past the task that processed it. Third-party errors are wrapped at the
boundary with ``raise ... from exc`` so callers only need to know these:
the storage's in `pipeline/storage.py`, the record stores' in
`pipeline/records/`, urllib3's in `pipeline/fetch.py` and `pipeline/exchange.py`.

    PipelineError                 every error this project raises on purpose
    ├── ConfigError               a setting is missing or malformed
    ├── InputError                the caller's input is unusable; nothing was done
    │   ├── CsvError              the CSV, naming its line and column
    │   ├── OptionError           an output option (format, quality, max_width...)
    │   └── PayloadTooLarge       over an upload limit (bytes, rows, URLs)
    ├── RequestNotFound           no such request (or not the caller's to see)
    ├── NotReady                  it exists but is not there yet (an output CSV)
    ├── Conflict                  the request's state does not allow this
    │   ├── AlreadyFinished       cancelling a final request
    │   └── NotFinished           deleting an unfinished one
    ├── StorageError              the object store failed: gone, full, unreachable
    │   └── ObjectNotFound        the store works; no object under that key
    ├── RecordStoreError          the record store (SQLite or MongoDB) failed
    ├── Incomplete                images still without a result at completion
    ├── SchedulerLost             the Dask scheduler went away for good
    ├── ShuttingDown              this process is stopping
    ├── FetchError                one URL could not be fetched (recorded per image)
    │   └── AddressRefused        its address is not one the policy lets us fetch
    ├── ImageRejected             bytes that are not an image we process (per image)
    │   └── NoThumbnail           an output that cannot be made a thumbnail
    └── ApiError                  (api/errors.py) what the HTTP API refuses itself
        ├── ApiKeyRequired        no API key, or not one configured
        ├── RateLimited           over the client's rate limit
        ├── LengthRequired        a body without Content-Length it cannot delimit
        ├── BadRequest            a malformed request: its multipart body, a field
        │   └── InvalidParam      a query parameter the route does not take
        ├── NotFound              no such object, thumbnail or route argument
        ├── MethodNotAllowed      the wrong method, with how to do it right
        └── UnsupportedMediaType  not multipart/form-data, or compressed

What HTTP answer each one becomes (status and title) is decided in one table,
`api/errors.py`, and nowhere else: these classes know nothing of HTTP.
"""

from __future__ import annotations

import errno


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(PipelineError):
    """A setting from the environment is missing or malformed."""


class InputError(PipelineError):
    """The caller's input is unusable; nothing was stored or recorded."""


class CsvError(InputError):
    """The uploaded CSV is invalid; names the row and column when it can.

    `row` is the 1-based line number of the CSV file (the header is line 1),
    which is what a person sees in a spreadsheet or editor.
    """

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


class OptionError(InputError):
    """An output option the caller gave is unusable; `field` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class PayloadTooLarge(InputError):
    """The upload is over a limit: its bytes, rows or URLs."""


class RequestNotFound(PipelineError):
    def __init__(self, request_id: str):
        self.request_id = request_id
        super().__init__(f"no request with id {request_id!r}")


class NotReady(PipelineError):
    """The thing asked for exists but is not available yet (e.g. output CSV)."""


class Conflict(PipelineError):
    """The request is not in a state that allows this. `status` is the request's
    status (a `RequestStatus` value, not an HTTP one) when it was refused."""

    def __init__(self, message: str, *, request_id: str, status: str):
        self.request_id = request_id
        self.status = status
        super().__init__(message)


class AlreadyFinished(Conflict):
    """Cancelling a request that is final already."""


class NotFinished(Conflict):
    """Deleting a request that is not final yet (cancel it first)."""


class StorageError(PipelineError):
    """Reading or writing the object store failed: it is gone, full, read-only or
    unreachable. Whatever the filesystem library raised is its `__cause__`."""


class ObjectNotFound(StorageError):
    """No object under the key: the storage answered, the object is not there.

    Not a backend failure (`backend_unavailable` says no): an input that is gone
    stays gone, and the API answers 404 where a missing object means that."""


class RecordStoreError(PipelineError):
    """The record store (SQLite or MongoDB) failed."""


class Incomplete(PipelineError):
    """Images of the request still have no result: it cannot be completed yet (the
    driver runs them again; it never leaves the driver)."""

    def __init__(self, request_id: str, pending: int):
        self.pending = pending
        super().__init__(f"request {request_id} has {pending} images without a result")


class SchedulerLost(PipelineError):
    """The Dask scheduler went away and the client could not get it back."""


class ShuttingDown(PipelineError):
    """The process is stopping; the request is left for another process or the next start."""


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


class AddressRefused(FetchError):
    """The URL points at an address the policy forbids. Permanent: never retried."""


class ImageRejected(PipelineError):
    """The bytes are not an image this service can process. Recorded per image."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class NoThumbnail(ImageRejected):
    """An output image cannot be made into a thumbnail; the message says why."""


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
    if isinstance(exc, ObjectNotFound):
        return False
    if isinstance(exc, RecordStoreError | StorageError):
        return True
    return (
        isinstance(exc, OSError)
        and not isinstance(exc, FileNotFoundError)
        and exc.errno in _UNAVAILABLE_ERRNOS
    )

"""Errors -> HTTP, in one place. Always JSON with a title and a description.

The errors themselves know nothing of HTTP: the domain's are `PipelineError`s
(pipeline/errors.py draws the whole tree), the API's own refusals below are
`ApiError`s under the same base. `STATUS` is the one table from an error class
to its HTTP status and title; an error not in it takes its nearest base's row,
as Falcon picks a handler. Resources raise, never set an error status
themselves; `register` installs the one handler that answers for every row,
and `_DETAILS` the few answers that carry a field or a header more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import falcon

from pipeline.errors import (
    AlreadyFinished,
    Conflict,
    CsvError,
    InputError,
    NotFinished,
    NoThumbnail,
    NotReady,
    OptionError,
    PayloadTooLarge,
    PipelineError,
    RecordStoreError,
    RequestNotFound,
    StorageError,
)

log = logging.getLogger(__name__)


class ApiError(PipelineError):
    """A request the HTTP API refuses itself, before or beside the pipeline.

    The message is the description a person reads; `title`, when given, names the
    case more precisely than the table's title for the class."""

    def __init__(self, description: str, *, title: str | None = None):
        self.title = title
        super().__init__(description)


class ApiKeyRequired(ApiError):
    """No API key, or one that is not configured, on a route that needs one."""

    def __init__(self, *, presented: bool):
        self.presented = presented
        what = (
            "The API key sent is not one this service accepts."
            if presented
            else "This service requires an API key."
        )
        super().__init__(
            f"{what} Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
            title="Invalid API key" if presented else None,
        )


class RateLimited(ApiError):
    """The client has spent its token bucket; `retry_after` is whole seconds (>= 1)."""

    def __init__(self, retry_after: int, policy: str):
        self.retry_after = retry_after
        self.policy = policy
        super().__init__(
            f"This client is over its rate limit ({policy}); retry in {retry_after} s. "
            "When polling a status, a request every few seconds is plenty."
        )


class LengthRequired(ApiError):
    """A body without Content-Length from a server that cannot say where it ends."""

    def __init__(self) -> None:
        super().__init__(
            "Send the upload with a Content-Length header (curl -F file=@products.csv does)."
        )


class BadRequest(ApiError):
    """The request is malformed: its multipart body, a missing or repeated field."""


class InvalidParam(BadRequest):
    """A query parameter with a value the route does not take (as Falcon words it)."""

    def __init__(self, param: str, message: str):
        self.param = param
        super().__init__(f'The "{param}" parameter is invalid. {message}')


class NotFound(ApiError):
    """Nothing at this address: no such stored output, thumbnail or image."""


class MethodNotAllowed(ApiError):
    """The route exists, not for this method; the answer says how to use it."""

    def __init__(self, description: str, *, allow: str, **fields: str):
        self.allow = allow
        self.fields = fields
        super().__init__(description)


class UnsupportedMediaType(ApiError):
    """A body the route does not read: not multipart/form-data, or compressed."""


# The one table: an error class -> (HTTP status, title).
STATUS: dict[type[Exception], tuple[int, str]] = {
    # The caller's input; nothing was done.
    InputError: (422, "Invalid input"),
    CsvError: (422, "Invalid CSV"),
    OptionError: (422, "Invalid option"),
    PayloadTooLarge: (413, "Payload too large"),
    # A request, and what its state allows.
    RequestNotFound: (404, "Request not found"),
    NotReady: (409, "Not ready"),
    Conflict: (409, "Conflict"),
    AlreadyFinished: (409, "Request already finished"),
    NotFinished: (409, "Request not finished"),
    NoThumbnail: (404, "No thumbnail"),
    # A backend out of service (a missing object, ObjectNotFound, is one of these
    # unless the resource says what it means: a 404 for the media and thumbnails).
    StorageError: (503, "Storage unavailable"),
    RecordStoreError: (503, "Record store unavailable"),
    # The API's own refusals.
    BadRequest: (400, "Bad request"),
    InvalidParam: (400, "Invalid parameter"),
    ApiKeyRequired: (401, "API key required"),
    NotFound: (404, "Not found"),
    MethodNotAllowed: (405, "Method not allowed"),
    LengthRequired: (411, "Length required"),
    UnsupportedMediaType: (415, "Unsupported media type"),
    RateLimited: (429, "Too many requests"),
}

_T = TypeVar("_T")


def _nearest(table: dict[type[Exception], _T], exc: Exception) -> _T | None:
    """The row of the exception's own class, else of its nearest base in the table."""
    return next((table[cls] for cls in type(exc).__mro__ if cls in table), None)


def status_of(exc: Exception) -> tuple[int, str]:
    """The HTTP status and title `exc` is answered with (LookupError: not an answer)."""
    row = _nearest(STATUS, exc)
    if row is None:
        raise LookupError(f"no HTTP answer for {type(exc).__name__}")
    code, title = row
    if isinstance(exc, ApiError) and exc.title is not None:
        title = exc.title
    return code, title


# What an answer carries besides the title and the message as its description:
# (req, resp, exc) -> the description and the body's other fields; may set headers.
Details = Callable[[falcon.Request, falcon.Response, Any], tuple[str, dict[str, Any]]]


def _csv_error(req, resp, exc: CsvError) -> tuple[str, dict[str, Any]]:
    # `line`: the line of the uploaded file; `row` is the same number, kept for
    # older clients.
    return str(exc), {"line": exc.row, "row": exc.row, "column": exc.column}


def _option_error(req, resp, exc: OptionError) -> tuple[str, dict[str, Any]]:
    return str(exc), {"field": exc.field}


def _request_not_found(req, resp, exc: RequestNotFound) -> tuple[str, dict[str, Any]]:
    return f"There is no request with id {exc.request_id!r}.", {}


def _conflict(req, resp, exc: Conflict) -> tuple[str, dict[str, Any]]:
    return str(exc), {"status": exc.status}


# What the caller is told when a backend fails: which one, and that nothing was
# done (the cause, with paths and addresses, goes to the log and to /health).
_BACKENDS = {
    "records": "The service's record store",
    "storage": "The service's storage",
}


def _unavailable(component: str) -> Details:
    what = _BACKENDS[component]

    def details(req, resp, exc: Exception) -> tuple[str, dict[str, Any]]:
        log.error("%s failing on %s %s: %s", component, req.method, req.path, exc)
        resp.set_header("Retry-After", "5")
        return (
            f"{what} is not working right now, so this was not done (an upload is not "
            "recorded). Try again in a few seconds; GET /health says when it is back.",
            {"component": component},
        )

    return details


def _api_key_required(req, resp, exc: ApiKeyRequired) -> tuple[str, dict[str, Any]]:
    # RFC 6750: the challenge names the scheme; error="invalid_token" when one was sent.
    challenge = 'Bearer realm="imagepipe"'
    if exc.presented:
        challenge += ', error="invalid_token"'
    resp.set_header("WWW-Authenticate", challenge)
    return str(exc), {}


def _rate_limited(req, resp, exc: RateLimited) -> tuple[str, dict[str, Any]]:
    resp.set_header("Retry-After", str(exc.retry_after))
    return str(exc), {"retry_after": exc.retry_after}


def _method_not_allowed(req, resp, exc: MethodNotAllowed) -> tuple[str, dict[str, Any]]:
    resp.set_header("Allow", exc.allow)
    return str(exc), dict(exc.fields)


_DETAILS: dict[type[Exception], Details] = {
    CsvError: _csv_error,
    OptionError: _option_error,
    RequestNotFound: _request_not_found,
    Conflict: _conflict,
    StorageError: _unavailable("storage"),
    RecordStoreError: _unavailable("records"),
    ApiKeyRequired: _api_key_required,
    RateLimited: _rate_limited,
    MethodNotAllowed: _method_not_allowed,
}


def _answer(req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any) -> None:
    code, title = status_of(exc)
    details = _nearest(_DETAILS, exc)
    description, fields = details(req, resp, exc) if details else (str(exc), {})
    resp.status = code
    resp.media = {"title": title, "description": description, **fields}


def register(app: falcon.App) -> None:
    # Every row of the table; Falcon hands an error to the handler of its nearest
    # class, and `_answer` reads the same row.
    for cls in STATUS:
        app.add_error_handler(cls, _answer)

"""Domain errors -> HTTP, in one place. Always JSON with a title and a description."""

from __future__ import annotations

import logging

import falcon

from pipeline.errors import (
    Conflict,
    CsvError,
    InputError,
    NotReady,
    RecordStoreError,
    RequestNotFound,
    StorageError,
)
from pipeline.options import OptionError

log = logging.getLogger(__name__)


class ApiKeyRequired(Exception):
    """No API key, or one that is not configured, on a route that needs one."""

    def __init__(self, *, presented: bool):
        self.presented = presented
        super().__init__("invalid API key" if presented else "API key required")


class RateLimited(Exception):
    """The client has spent its token bucket; `retry_after` is whole seconds (>= 1)."""

    def __init__(self, retry_after: int, policy: str):
        self.retry_after = retry_after
        self.policy = policy
        super().__init__(f"rate limited; retry after {retry_after} s")


class LengthRequired(Exception):
    """A body without Content-Length from a server that cannot say where it ends."""


def _respond(resp: falcon.Response, code: int, title: str, description: str, **extra) -> None:
    resp.status = code
    resp.media = {"title": title, "description": description, **extra}


def _csv_error(req, resp, exc: CsvError, params) -> None:
    # `line`: the line of the uploaded file; `row` is the same number, kept for
    # older clients.
    _respond(resp, exc.status, exc.title, str(exc), line=exc.row, row=exc.row, column=exc.column)


def _input_error(req, resp, exc: InputError, params) -> None:
    _respond(resp, exc.status, exc.title, str(exc))


def _option_error(req, resp, exc: OptionError, params) -> None:
    _respond(resp, exc.status, exc.title, str(exc), field=exc.field)


def _not_found(req, resp, exc: RequestNotFound, params) -> None:
    _respond(resp, 404, "Request not found", f"There is no request with id {exc.request_id!r}.")


def _not_ready(req, resp, exc: NotReady, params) -> None:
    _respond(resp, 409, "Not ready", str(exc))


def _conflict(req, resp, exc: Conflict, params) -> None:
    _respond(resp, 409, exc.title, str(exc), status=exc.status)


# What the caller is told when a backend fails: which one, and that nothing was
# done (the cause, with paths and addresses, goes to the log and to /health).
_BACKENDS = {
    "records": ("Record store unavailable", "The service's record store"),
    "storage": ("Storage unavailable", "The service's storage"),
}


def _unavailable(component: str):
    title, what = _BACKENDS[component]

    def handler(req, resp, exc: Exception, params) -> None:
        log.error("%s failing on %s %s: %s", component, req.method, req.path, exc)
        _respond(
            resp,
            503,
            title,
            f"{what} is not working right now, so this was not done (an upload is not "
            "recorded). Try again in a few seconds; GET /health says when it is back.",
            component=component,
        )
        resp.set_header("Retry-After", "5")

    return handler


def _api_key_required(req, resp, exc: ApiKeyRequired, params) -> None:
    # RFC 6750: the challenge names the scheme; error="invalid_token" when one was sent.
    challenge = 'Bearer realm="imagepipe"'
    if exc.presented:
        challenge += ', error="invalid_token"'
        title, what = "Invalid API key", "The API key sent is not one this service accepts."
    else:
        title, what = "API key required", "This service requires an API key."
    _respond(
        resp,
        401,
        title,
        f"{what} Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
    )
    resp.set_header("WWW-Authenticate", challenge)


def _rate_limited(req, resp, exc: RateLimited, params) -> None:
    _respond(
        resp,
        429,
        "Too many requests",
        f"This client is over its rate limit ({exc.policy}); retry in {exc.retry_after} s. "
        "When polling a status, a request every few seconds is plenty.",
        retry_after=exc.retry_after,
    )
    resp.set_header("Retry-After", str(exc.retry_after))


def _length_required(req, resp, exc: LengthRequired, params) -> None:
    _respond(
        resp,
        411,
        "Length required",
        "Send the upload with a Content-Length header (curl -F file=@products.csv does).",
    )


def register(app: falcon.App) -> None:
    # Falcon picks the most specific handler for an exception's class.
    app.add_error_handler(InputError, _input_error)
    app.add_error_handler(CsvError, _csv_error)
    app.add_error_handler(OptionError, _option_error)
    app.add_error_handler(RequestNotFound, _not_found)
    app.add_error_handler(NotReady, _not_ready)
    app.add_error_handler(Conflict, _conflict)
    app.add_error_handler(StorageError, _unavailable("storage"))
    app.add_error_handler(RecordStoreError, _unavailable("records"))
    app.add_error_handler(ApiKeyRequired, _api_key_required)
    app.add_error_handler(RateLimited, _rate_limited)
    app.add_error_handler(LengthRequired, _length_required)

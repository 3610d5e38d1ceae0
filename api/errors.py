"""Domain errors -> HTTP, in one place. Always JSON with a title and a description."""

from __future__ import annotations

import logging

import falcon

from pipeline.errors import (
    CsvError,
    InputError,
    NotReady,
    RecordStoreError,
    RequestNotFound,
    StorageError,
)

log = logging.getLogger(__name__)


def _respond(resp: falcon.Response, status: int, title: str, description: str, **extra) -> None:
    resp.status = status
    resp.media = {"title": title, "description": description, **extra}


def _csv_error(req, resp, exc: CsvError, params) -> None:
    _respond(resp, exc.status, exc.title, str(exc), row=exc.row, column=exc.column)


def _input_error(req, resp, exc: InputError, params) -> None:
    _respond(resp, exc.status, exc.title, str(exc))


def _not_found(req, resp, exc: RequestNotFound, params) -> None:
    _respond(resp, 404, "Request not found", f"There is no request with id {exc.request_id!r}.")


def _not_ready(req, resp, exc: NotReady, params) -> None:
    _respond(resp, 409, "Not ready", str(exc))


def _unavailable(req, resp, exc: Exception, params) -> None:
    log.error("backend failure on %s %s: %s", req.method, req.path, exc)
    _respond(
        resp,
        503,
        "Service unavailable",
        f"A backend is failing ({type(exc).__name__}); nothing was lost, try again shortly.",
    )
    resp.set_header("Retry-After", "5")


def register(app: falcon.App) -> None:
    # Falcon picks the most specific handler for an exception's class.
    app.add_error_handler(InputError, _input_error)
    app.add_error_handler(CsvError, _csv_error)
    app.add_error_handler(RequestNotFound, _not_found)
    app.add_error_handler(NotReady, _not_ready)
    app.add_error_handler(StorageError, _unavailable)
    app.add_error_handler(RecordStoreError, _unavailable)

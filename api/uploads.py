"""The upload resource: a multipart CSV in, a recorded and submitted request out.

Hostile input is refused as early and as cheaply as possible, and nothing is
stored, recorded or submitted unless the whole file is valid:
- a declared Content-Length over the limit is refused before reading a byte;
- a body without one (chunked, from servers that pass it on undecoded) is read
  through a counter that stops one byte past the limit;
- the `file` part is read with a bounded `read(limit + 1)`, never whole;
- compressed bodies (Content-Encoding) are refused, never inflated;
- then the CSV validation (`pipeline.csv_input`) judges the bytes.
Under waitress the server refuses bodies over `max_body_bytes` itself, before
buffering them (see `api.serve`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Protocol

import falcon
from falcon.media.multipart import BodyPart
from falcon.typing import ReadableIO

from api.auth import ApiKeys
from api.errors import BadRequest, LengthRequired, MethodNotAllowed, UnsupportedMediaType
from api.resources import PATHS
from pipeline.clock import Clock
from pipeline.csv_input import csv_limits
from pipeline.errors import FetchError, InputError, OptionError, PayloadTooLarge
from pipeline.intake import accept_csv
from pipeline.links import Links
from pipeline.models import RequestStatus
from pipeline.netguard import validate_url
from pipeline.options import FIELDS as OPTION_FIELDS
from pipeline.options import resolve_options
from pipeline.records.base import RecordStore
from pipeline.settings import Settings
from pipeline.storage import Storage

# Room for the multipart framing and the small form fields around the CSV, so a
# CSV of exactly MAX_UPLOAD_BYTES still fits in the body.
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_WEBHOOK_URL_CHARS = 2048
MAX_SOURCE_NAME_CHARS = 255
MAX_OPTION_CHARS = 32
FORM_FIELDS = ", ".join(("file", "webhook_url", *OPTION_FIELDS))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def max_body_bytes(settings: Settings) -> int:
    """The largest request body an upload may have (the server's limit too)."""
    return settings.max_upload_bytes + FORM_OVERHEAD_BYTES


class Submitter(Protocol):
    def submit(self, request_id: str) -> object:
        """Drive the recorded request in the background; returns at once (its result,
        whether this process took the request, is not needed here)."""


class Uploads:
    def __init__(
        self,
        settings: Settings,
        store: RecordStore,
        storage: Storage,
        runner: Submitter,
        *,
        clock: Clock,
        new_id: Callable[[], str],
        keys: ApiKeys,
    ):
        self.settings = settings
        self.limits = csv_limits(settings)
        self.option_defaults = settings.option_defaults()
        self.max_body = max_body_bytes(settings)
        self.store = store
        self.storage = storage
        self.runner = runner
        self.clock = clock
        self.new_id = new_id
        self.keys = keys

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # People open the upload URL in a browser or curl it without -F: say how.
        base = self.settings.base_url
        raise MethodNotAllowed(
            "Upload a CSV with POST, as a multipart form field named 'file': "
            f"curl -F file=@products.csv {base}{req.path}. Optional fields: "
            f"{FORM_FIELDS.removeprefix('file, ')}. The upload page is at {base}/ and "
            f"the API documentation at {base}/docs.",
            allow="POST",
            example=f"curl -F file=@products.csv {base}{req.path}",
            docs=f"{base}/docs",
        )

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        self._check_envelope(req)
        data, filename, webhook_url, given = self._read_form(req)
        options = resolve_options(given, self.option_defaults)
        accepted = accept_csv(
            data,
            store=self.store,
            storage=self.storage,
            limits=self.limits,
            now=self.clock(),
            request_id=self.new_id(),
            source_name=filename,
            webhook_url=webhook_url,
            owner=self.keys.owner(req),
            options=options,
        )
        request_id = accepted.request_id
        self.runner.submit(request_id)
        links = Links(self.settings.base_url)
        resp.status = falcon.HTTP_202
        resp.location = PATHS.status(request_id)
        resp.media = {
            "request_id": request_id,
            "status": str(RequestStatus.PENDING),
            "status_url": links.status(request_id),
            "output_csv_url": links.output_csv(request_id),
            "total_products": accepted.total_products,
            "total_images": accepted.total_images,
            "options": options.as_dict(),
        }

    def _check_envelope(self, req: falcon.Request) -> None:
        """Refuse from the headers alone, before reading any of the body."""
        if req.content_length is not None and req.content_length > self.max_body:
            raise PayloadTooLarge(
                f"the upload is {req.content_length:,} bytes; the limit is "
                f"{self.settings.max_upload_bytes:,} bytes for the CSV (MAX_UPLOAD_BYTES); "
                "split the file"
            )
        encoding = (req.get_header("Content-Encoding") or "identity").strip().lower()
        if encoding != "identity":
            raise UnsupportedMediaType(
                f"The body has Content-Encoding {encoding!r}; send the CSV "
                "uncompressed as a multipart form field named 'file'.",
                title="Compressed uploads are not accepted",
            )
        if not (req.content_type or "").lower().startswith("multipart/form-data"):
            raise UnsupportedMediaType(
                "Send the CSV as a multipart form field named 'file', "
                "e.g. curl -F file=@products.csv http://localhost:5000/api/v1/upload",
                title="Expected multipart/form-data",
            )

    def _body(self, req: falcon.Request) -> tuple[ReadableIO, int]:
        """The body stream and how far the multipart parser may read it."""
        if req.content_length is not None:
            return req.bounded_stream, req.content_length
        # No length: only safe to read to the end when the server has delimited the
        # input (PEP 3333's wsgi.input_terminated); elsewhere a read could block on the
        # client's next request.
        if not req.env.get("wsgi.input_terminated"):
            raise LengthRequired()
        return _CappedStream(req.stream, self.max_body, self.settings), self.max_body + 1

    def _read_form(self, req: falcon.Request) -> tuple[bytes, str, str | None, dict[str, str]]:
        """The CSV, its file name, the webhook URL and the output options given."""
        data: bytes | None = None
        filename = ""
        webhook_url: str | None = None
        given: dict[str, str] = {}
        refused: list[str] = []
        stream, length = self._body(req)
        handler = req.options.media_handlers[falcon.MEDIA_MULTIPART]
        assert isinstance(handler, falcon.media.MultipartFormHandler)  # as create_app sets it
        try:
            for part in handler.deserialize(stream, req.content_type, length):
                if part.name == "file":
                    if data is not None:
                        raise BadRequest(
                            "Send one CSV per upload, in one field named 'file'.",
                            title="More than one file",
                        )
                    # Bounded: one byte past the limit is enough to know it is too big.
                    data = part.stream.read(self.settings.max_upload_bytes + 1)
                    filename = _source_name(part.filename or "")
                elif part.name == "webhook_url":
                    webhook_url = part.text.strip() or None
                elif part.name in OPTION_FIELDS and part.name not in given:
                    given[part.name] = _option_text(part.name, part)
                else:
                    # A misspelt or unsupported option must not pass silently (the
                    # request would come out otherwise than asked): refused once the
                    # form is read, after a missing file, which is the bigger mistake.
                    refused.append(str(part.name)[:64])
        except falcon.MediaMalformedError as exc:
            raise BadRequest(
                f"The body is not valid multipart/form-data "
                f"({exc.description or exc}); send the CSV as -F file=@products.csv",
                title="Malformed multipart body",
            ) from exc
        if data is None:
            raise BadRequest(
                "The multipart form has no field named 'file'; "
                "send the CSV as -F file=@products.csv",
                title="Missing file",
            )
        if refused:
            name = refused[0]
            raise OptionError(
                name,
                "given twice"
                if name in given
                else f"not a field of the upload form; the fields are {FORM_FIELDS}",
            )
        if len(data) > self.settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"the CSV is over the limit of {self.settings.max_upload_bytes:,} bytes "
                "(MAX_UPLOAD_BYTES); split the file"
            )
        if webhook_url is not None:
            _check_webhook_url(webhook_url)
        return data, filename, webhook_url, given


def _option_text(name: str, part: BodyPart) -> str:
    # An option is a short number or word: read a little, never a whole part.
    raw = part.stream.read(MAX_OPTION_CHARS + 1)
    text = raw.decode("utf-8", errors="replace")
    if len(raw) > MAX_OPTION_CHARS:
        raise OptionError(name, f"is longer than {MAX_OPTION_CHARS} characters")
    return text


class _CappedStream:
    """A body read without Content-Length, refused once it passes `cap` bytes."""

    def __init__(self, stream: ReadableIO, cap: int, settings: Settings):
        self.stream = stream
        self.cap = cap
        self.settings = settings
        self.consumed = 0

    def read(self, size: int | None = -1, /) -> bytes:
        allowed = self.cap + 1 - self.consumed
        chunk = self.stream.read(allowed if size is None or size < 0 else min(size, allowed))
        self.consumed += len(chunk)
        if self.consumed > self.cap:
            raise PayloadTooLarge(
                f"the upload is over {self.cap:,} bytes; the limit is "
                f"{self.settings.max_upload_bytes:,} bytes for the CSV (MAX_UPLOAD_BYTES); "
                "split the file"
            )
        return chunk


def _source_name(filename: str) -> str:
    # Recorded and shown back, never used as a path: keep the last path segment of
    # what the client claims, printable and of a sane length.
    name = PurePosixPath(filename.replace("\\", "/")).name
    return _CONTROL.sub("", name)[:MAX_SOURCE_NAME_CHARS]


def _check_webhook_url(url: str) -> None:
    """The same URL rules as image downloads (pipeline.netguard), refused now with a 422.

    Addresses are checked when the webhook is sent (they can change until then).
    """
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise InputError(f"webhook_url is longer than {MAX_WEBHOOK_URL_CHARS} characters")
    if _CONTROL.search(url) or " " in url:
        raise InputError(f"webhook_url must be an absolute http(s) URL, got {url!r}")
    try:
        validate_url(url)
    except FetchError as exc:
        raise InputError(f"webhook_url {url!r} is not usable: {exc.reason}") from exc

"""The access log: one line per HTTP request, to the `imagepipe.access` logger.

    127.0.0.1 "GET /api/v1/requests/3f0c…?page=2" 200 12.3ms 512B
    127.0.0.1 "POST /api/v1/upload" 202 48.0ms 411B request=3f0c…
    127.0.0.1 "POST /api/v1/upload" 413 - 180B

Client address, the quoted method and target, status, the time the app took
(until the answer is ready to send: a streamed body's sending is not counted;
`-` for what waitress refuses before the app sees it), the body's size (`-`
when streamed), and the id of the request the answer is about when the path
does not already say it (an upload's new id). `ACCESS_LINE` parses a line.

Healthy answers to `/health` are not logged (load balancers poll it every few
seconds); a failing one is.

Never logged: headers (the API key travels in `Authorization` or `X-API-Key`),
bodies, and the value of any query parameter named like a secret (key, token,
secret, signature, password, credential, `X-Amz-*`...), written `REDACTED`.
Characters that could break a line or its quoting are percent-encoded.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from urllib.parse import quote, unquote_plus

import falcon

from api.forwarded import peer_address

ACCESS_LOGGER = "imagepipe.access"
REDACTED = "REDACTED"
ACCESS_LINE = re.compile(
    r'(?P<client>\S+) "(?P<method>\S+) (?P<target>\S+)" (?P<status>\d{3}) '
    r"(?:(?P<ms>\d+\.\d)ms|-) (?:(?P<bytes>\d+)B|-)(?: request=(?P<request_id>\S+))?"
)
# Presigned and signed URLs (S3's X-Amz-*, GCS's X-Goog-*, Azure's sig) and the
# usual names of keys and passwords. Hiding an innocent value costs nothing.
_SECRET_NAME = re.compile(r"key|token|secret|sig|pass|pwd|auth|credential|session|^x-(amz|goog)-")
# What stays readable in a logged target: printable ASCII but space, quote and backslash.
_SAFE = "!#$%&'()*+,/:;=?@[]^`{|}~"
_STARTED = "access_log_started"


def redact_query(query: str) -> str:
    """The query string with the values of secret-looking parameters replaced."""
    items = []
    for item in query.split("&"):
        name = item.partition("=")[0]
        if _SECRET_NAME.search(unquote_plus(name).casefold()):
            item = f"{name}={REDACTED}"
        items.append(item)
    return "&".join(items)


def access_line(
    client: str | None,
    method: str | None,
    path: str | None,
    query: str | None,
    status: int,
    seconds: float | None,
    size: int | None,
    request_id: str | None = None,
) -> str:
    """One line of the log; `None` for what is not known."""
    target = quote(path or "-", safe=_SAFE)
    if query:
        target += "?" + quote(redact_query(query), safe=_SAFE)
    line = (
        f'{quote(client or "-", safe=_SAFE)} "{quote(method or "-", safe="")} {target}" {status} '
        f"{'-' if seconds is None else f'{seconds * 1000:.1f}ms'} "
        f"{'-' if size is None else f'{size}B'}"
    )
    if request_id and request_id not in target:
        line += f" request={quote(request_id, safe='')}"
    return line


class AccessLog:
    """Falcon middleware; register it first, so its line comes after every other
    middleware's work (rate limit and key refusals included) and times it all."""

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
        *,
        quiet_paths: frozenset[str] = frozenset(),
        address: Callable[[falcon.Request], str] = peer_address,
    ):
        """`quiet_paths`: paths whose answers are logged only when they are errors;
        `address`: the client's address (api/forwarded.py's, behind proxies)."""
        self.monotonic = monotonic
        self.log = logger or logging.getLogger(ACCESS_LOGGER)
        self.quiet_paths = quiet_paths
        self.address = address

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context[_STARTED] = self.monotonic()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        if req.path in self.quiet_paths and resp.status_code < 400:
            return
        started = req.context.get(_STARTED)
        seconds = None if started is None else self.monotonic() - started
        media = resp.media if resp.stream is None else None
        request_id = media.get("request_id") if isinstance(media, dict) else None
        line = access_line(
            self.address(req),
            req.method,
            req.path,
            req.query_string,
            resp.status_code,
            seconds,
            _body_size(req, resp),
            request_id if isinstance(request_id, str) else None,
        )
        self.log.info("%s", line)


def _body_size(req: falcon.Request, resp: falcon.Response) -> int | None:
    if req.method == "HEAD" or resp.status_code in (204, 304) or resp.status_code < 200:
        return 0
    if resp.stream is not None:
        length = resp.content_length
        return int(length) if length is not None else None
    try:
        body = resp.render_body()  # serialised once: falcon keeps it for sending
    except Exception:  # falcon reports it when it renders the body itself
        return None
    return len(body or b"")

"""What a failed outbound HTTP exchange says to the user: pure functions on values.

A download's reason ends up on the image ("download failed: ..."), a webhook's
on the delivery's attempts, and a person reads it to decide what to tell the
host. So it names what the host did, in the phase it did it ("headers not
complete after 30s (host dripping)"), never a library's repr
(`PinnedHTTPConnection(host=...)`). `pipeline.exchange` keeps the `Progress`
of an exchange as it goes; `explain` turns that and the exception into words.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import ssl
from dataclasses import dataclass

import urllib3.exceptions as u3

KiB = 1024

# How far an exchange got: each phase starts when the one before it ends.
CONNECT = "connect"
TLS = "tls"
SEND = "send"
STATUS = "status"
HEADERS = "headers"
BODY = "body"
TRAILERS = "trailers"

# Why an exchange was stopped before its deadline (a byte budget ran out).
TOO_MANY_INTERIM = "interim"
HEAD_TOO_LARGE = "head"
BODY_TOO_LARGE = "body"
FRAMING_FLOOD = "framing"
TRAILER_FLOOD = "trailers"


@dataclass(frozen=True)
class Budget:
    """Bytes an answer may spend, counted as http.client reads them."""

    head_bytes: int = 256 * KiB  # status line and headers, interim answers included
    interim: int = 8  # `100 Continue` answers before the real one
    body_bytes: int | None = None  # on the wire (before decoding); None: no limit
    framing_slack: int = 64 * KiB  # chunk-size lines may exceed the data by this much
    trailer_bytes: int = 64 * KiB
    trailer_lines: int = 100  # as http.client limits headers


@dataclass
class Progress:
    """What one exchange has seen so far; the exchange's own thread writes it."""

    timeout: float  # the hard deadline, seconds from the start
    peer: str = "host"  # "host" for downloads, "receiver" for webhooks
    idle: float | None = None  # the per-read timeout, when there is one
    phase: str = CONNECT
    port: int | None = None
    connect_timeout: float | None = None
    status_bytes: int = 0  # of the status line being read
    header_bytes: int = 0  # after the status line
    head_bytes: int = 0  # every status line and header of this answer
    interim: int = 0  # `100 Continue` answers so far
    body_bytes: int = 0  # body data on the wire
    framing_bytes: int = 0  # chunk-size lines
    partial_line: bool = False  # the last line read had no end: the peer stopped mid-line
    trailer_lines: int = 0
    trailer_bytes: int = 0
    encoding: str | None = None  # the answer's Content-Encoding
    decoded: int = 0  # body bytes after decoding (the reader keeps this up to date)
    expired: bool = False
    stopped: str | None = None  # one of the budget reasons above
    peeked: bytes = b""  # what the peer sent that a TLS handshake could not read


def explain(progress: Progress, budget: Budget, exc: BaseException | None) -> tuple[str, bool]:
    """(reason, transient) for an exchange that failed with `exc` (None: cut short)."""
    if progress.stopped:
        return over_budget(progress, budget), False
    if progress.expired:
        return late(progress), False  # the time is spent: nothing is left to retry in
    if exc is None:
        return f"the {progress.peer} closed the connection early", True
    return from_error(progress, exc)


def late(p: Progress) -> str:
    """The deadline passed: say where the answer was when it did."""
    within = f"{p.timeout:g}s"
    peer = p.peer
    if p.phase == CONNECT:
        return f"could not connect within {within}"
    if p.phase == TLS:
        return f"TLS handshake not complete after {within}"
    if p.phase == SEND:
        return f"the {peer} did not take the request within {within}"
    if p.interim and p.phase in (STATUS, HEADERS):
        return f"{peer} sent only '100 Continue' ({p.interim} times) and no answer within {within}"
    if p.phase == STATUS:
        if p.status_bytes == 0:
            return f"{peer} sent no status line within {within}"
        return f"status line not complete after {within} ({peer} dripping)"
    if p.phase == HEADERS:
        how = f"{peer} dripping" if p.header_bytes else f"{peer} silent after the status line"
        return f"headers not complete after {within} ({how})"
    if p.phase == TRAILERS:
        return f"trailers not complete after {within} ({peer} dripping)"
    if p.partial_line:
        return f"chunk-size line not complete after {within} ({peer} dripping)"
    return f"body not complete after {within} ({p.body_bytes} bytes received)"


def over_budget(p: Progress, budget: Budget) -> str:
    peer = p.peer
    if p.stopped == TOO_MANY_INTERIM:
        return f"{peer} sent endless '100 Continue' ({p.interim} interim answers, no real one)"
    if p.stopped == HEAD_TOO_LARGE:
        return f"headers over {budget.head_bytes // KiB} KiB ({peer} flooding headers)"
    if p.stopped == FRAMING_FLOOD:
        return (
            f"chunk extension flood: {p.framing_bytes} bytes of chunk-size lines "
            f"for {p.body_bytes} bytes of data"
        )
    if p.stopped == TRAILER_FLOOD:
        return (
            f"trailers over {budget.trailer_lines} lines or {budget.trailer_bytes // KiB} KiB "
            f"({peer} flooding trailers)"
        )
    if p.encoding and p.decoded * 8 < p.body_bytes:
        # Compressed data that inflates to (almost) nothing: empty deflate blocks.
        return (
            f"{p.encoding} body over {budget.body_bytes} bytes on the wire that decodes "
            f"to only {p.decoded} bytes (empty compressed blocks)"
        )
    return f"body over {budget.body_bytes} bytes on the wire"


def from_error(p: Progress, exc: BaseException) -> tuple[str, bool]:
    """An error the peer caused before the deadline: a refused connection, a bad answer."""
    peer = p.peer
    cause = _root(exc)
    if isinstance(exc, u3.NewConnectionError):
        return f"connection failed: {os_words(cause, peer)}", True
    if isinstance(exc, u3.ConnectTimeoutError):
        after = f" (after {p.connect_timeout:g}s)" if p.connect_timeout else ""
        return f"timed out connecting{after}", True
    if isinstance(exc, u3.ReadTimeoutError) or isinstance(cause, TimeoutError):
        return idle_timeout(p), True
    if p.phase == TLS and isinstance(cause, ssl.SSLError | u3.SSLError):
        return tls_failure(p, cause)
    if isinstance(cause, http.client.LineTooLong):
        what = str(cause)
        if what == "chunk size":
            return "a chunk-size line over 64 KiB (chunk extension flood)", False
        return f"a {what} over 64 KiB ({peer} flooding)", False
    if isinstance(cause, http.client.HTTPException) and "more than" in str(cause):
        return f"{cause} ({peer} flooding headers)", False
    if isinstance(cause, http.client.RemoteDisconnected) or (
        p.phase == STATUS and p.status_bytes == 0 and p.interim == 0
    ):
        return f"the {peer} closed the connection without answering", True
    if isinstance(cause, http.client.BadStatusLine):
        return f"not an HTTP answer (status line {_shown(str(cause))})", False
    if isinstance(exc, u3.InvalidChunkLength):
        return "malformed chunked body (a chunk size that is not a number)", False
    if p.phase in (BODY, TRAILERS):
        return (
            f"connection closed before the body was complete ({p.body_bytes} bytes received)",
            True,
        )
    if p.phase == HEADERS:
        return f"the {peer} closed the connection in the middle of the headers", True
    return f"connection failed: {os_words(cause, peer)}", True


def idle_timeout(p: Progress) -> str:
    """Nothing arrived for one read timeout (the deadline is `late`)."""
    idle = f"nothing for {p.idle:g}s" if p.idle else "nothing arrived"
    if p.phase in (CONNECT, TLS):
        return f"timed out in the TLS handshake ({idle})"
    if p.phase == SEND:
        return f"timed out sending the request (the {p.peer} is not reading)"
    if p.phase == STATUS:
        return f"timed out waiting for a response ({idle})"
    if p.phase == HEADERS:
        return f"timed out in the headers ({idle})"
    return f"timed out reading the body ({idle}, {p.body_bytes} bytes received)"


def tls_failure(p: Progress, cause: BaseException) -> tuple[str, bool]:
    port = f" on port {p.port}" if p.port else ""
    if re.match(rb"(HTTP)?/?\d\.\d \d{3} ", p.peeked):
        # The peer answered our ClientHello in plain HTTP (a 400, usually): TLS read
        # its first 5 bytes ("HTTP/") as a record header, the rest is still unread.
        return f"TLS handshake failed: the {p.peer} does not speak HTTPS (plain HTTP{port})", False
    text = getattr(cause, "reason", None) or str(cause)
    if "WRONG_VERSION_NUMBER" in str(cause):
        return f"TLS handshake failed: the {p.peer} did not answer in TLS{port}", False
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: {cause.verify_message or 'certificate not trusted'}", True
    if isinstance(cause, ssl.SSLEOFError | ConnectionError) or not text:
        return f"TLS handshake failed: the {p.peer} closed the connection{port}", True
    return f"TLS handshake failed: {_shown(str(text).lower().replace('_', ' '))}", True


_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by the {peer}",
    errno.EPIPE: "the {peer} closed the connection",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "timed out",
    errno.EADDRNOTAVAIL: "address not available",
}


def os_words(exc: BaseException, peer: str = "host") -> str:
    """A socket error in a few words, without the library's wrapping."""
    number = getattr(exc, "errno", None)
    if isinstance(number, int) and number in _WORDS:
        return _WORDS[number].format(peer=peer)
    if isinstance(number, int) and number > 0:
        return os.strerror(number).lower()
    return _shown(str(exc) or type(exc).__name__)


def _root(exc: BaseException) -> BaseException:
    """The lowest error under urllib3's wrappers (`raise ... from`, `.reason`, args)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = (
            getattr(exc, "reason", None)
            if isinstance(getattr(exc, "reason", None), BaseException)
            else None
        )
        inner = inner or next((a for a in exc.args if isinstance(a, BaseException)), None)
        inner = inner or exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc


_REPR = re.compile(r"<?\w+(Connection|Pool)\w*\([^)]*\)>?:?\s*|\s*\(_ssl\.c:\d+\)")


def _shown(text: str, limit: int = 120) -> str:
    text = _REPR.sub("", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Body limits and rate limiting through the real server (waitress), over raw sockets."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.integration.service import Service

pytestmark = pytest.mark.integration
LIMIT = 100_000


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(
        tmp_path_factory.mktemp("hostile") / "data",
        MAX_UPLOAD_BYTES=str(LIMIT),
        RATE_LIMIT_PER_MINUTE="60",
        RATE_LIMIT_BURST="5",
    ).start()
    yield svc
    svc.stop()


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    try:
        while data := sock.recv(65536):  # a server still waiting for us: socket.timeout
            answer += data
    except ConnectionResetError:  # closed with the rest of our body unread
        pass
    return answer


def nothing_stored(service: Service) -> bool:
    # Every upload of this module is refused: no request may have left a file.
    return not list((service.data_dir / "objects").glob("requests/*"))


def test_declared_oversize_body_is_refused_before_it_is_sent(service):
    head = (
        b"POST /api/v1/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(head)  # the headers only: not one byte of the body is ever sent
        # The answer comes from the headers, and the server hangs up: it will not
        # wait for, nor read, the gigabyte announced.
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"\r\nConnection: close\r\n" in answer
    assert nothing_stored(service)


def test_chunked_oversize_body_is_cut_off(service):
    head = (
        b"POST /api/v1/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 65536
    chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
    endless = 256 * 2**20  # far past what socket buffers hold: a server reading on takes it
    sent = 0
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(head)
        try:
            while sent < endless:  # a body that never ends, sent until the server stops it
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading and closed
        answer = until_closed(sock)
    # It stopped taking the body a little past the 164 KB limit (plus what the
    # socket buffers hold), and said why.
    assert sent < endless, "the server read 256 MB of an oversized body"
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert nothing_stored(service)


def test_rate_limit_answers_429_with_retry_after(service):
    path = "/api/v1/status/" + "0" * 32
    codes = [service.get(path).status for _ in range(8)]
    assert codes[:5] == [404] * 5
    refused = service.get(path)
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert service.get("/health").status == 200


def answer_of(service: Service, head: bytes, body_chunks=()) -> tuple[bytes, dict[str, str], bytes]:
    """Send a request by hand; the status line, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        while not _complete(answer):
            try:
                data = sock.recv(65536)
            except ConnectionResetError:  # closed with the rest of our body unread
                break
            if not data:
                break
            answer += data
    head_part, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head_part.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}
    return status.encode(), headers, body


def _complete(answer: bytes) -> bool:
    head, found, body = answer.partition(b"\r\n\r\n")
    length = next(
        (int(line[15:]) for line in head.lower().split(b"\r\n") if line[:15] == b"content-length:"),
        None,
    )
    return bool(found) and length is not None and len(body) >= length


@pytest.mark.parametrize("framing", ["declared", "chunked"])
def test_the_servers_own_413_is_the_apis_json_error(service, framing):
    head = (
        b"POST /api/v1/upload?api_key=s3cr3t HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
    )
    if framing == "declared":
        status, headers, body = answer_of(service, head + b"Content-Length: 1000000000\r\n\r\n")
    else:
        piece = b"x" * 16384
        chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 20
        status, headers, body = answer_of(
            service, head + b"Transfer-Encoding: chunked\r\n\r\n", chunks
        )
    assert status.startswith(b"HTTP/1.1 413"), status
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error = json.loads(body)
    assert error["title"] == "Payload too large"
    assert f"the limit is {LIMIT:,} bytes for the CSV (MAX_UPLOAD_BYTES)" in error["description"]
    size = "1,000,000,000 bytes" if framing == "declared" else "over the limit"
    assert f"the upload is {size}" in error["description"]
    # waitress's refusals are in the access log too, secrets redacted
    deadline = time.monotonic() + 5
    line = f'"POST /api/v1/upload?api_key=REDACTED" 413 - {len(body)}B'
    while line not in service.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in service.logs()
    assert "s3cr3t" not in service.logs()


def test_a_request_waitress_cannot_parse_gets_a_json_error(service):
    status, headers, body = answer_of(
        service, b"POST /api/v1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n"
    )
    assert status.startswith(b"HTTP/1.1 400"), status
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["title"] == "Bad request"
    assert error["description"].startswith("the server could not read this HTTP request")


def test_every_request_is_in_the_access_log(service):
    # Answered or refused (this module's tests share one rate-limit bucket), it is logged.
    status = service.get("/api/v1/requests?per_page=5").status
    assert status in (200, 429)
    deadline = time.monotonic() + 5
    line = f'127.0.0.1 "GET /api/v1/requests?per_page=5" {status} '
    while line not in service.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in service.logs()
    # The start-up wait polled /health: healthy answers are not in the log.
    assert '"GET /health"' not in service.logs()

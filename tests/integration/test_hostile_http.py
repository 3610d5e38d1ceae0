"""Body limits and rate limiting through the real server (waitress), over raw sockets."""

from __future__ import annotations

import socket

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


def raw(service: Service, head: bytes, body_chunks=()) -> bytes:
    """Send a request by hand and return the status line and headers of the answer."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the body was all sent: good
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer


def test_declared_oversize_body_is_refused_before_it_is_sent(service):
    head = (
        b"POST /api/v1/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000000000\r\n\r\n"
    )
    answer = raw(service, head)  # no body at all: the answer must come from the headers
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_chunked_oversize_body_is_cut_off(service):
    head = (
        b"POST /api/v1/upload HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 16384
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * 20  # 320 KB, over the 164 KB body limit
    answer = raw(service, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_rate_limit_answers_429_with_retry_after(service):
    path = "/api/v1/status/" + "0" * 32
    codes = [service.get(path).status for _ in range(8)]
    assert codes[:5] == [404] * 5
    refused = service.get(path)
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert service.get("/health").status == 200

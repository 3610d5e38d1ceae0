"""Upload size limits at the application: refused early, and never read past the limit.

The body is a counting stand-in for the server's input stream, so each test
can say how much of an oversized body the service actually read. (Through a
real waitress: tests/integration/test_hostile_http.py.)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from api.uploads import max_body_bytes
from tests.api.support import multipart, stored_files, upload

HEADER = b"S. No.,Product Name,Input Image Urls\n"
ROW = b"1,Lamp,https://img.example.com/a.jpg\n"


class CountingInput:
    """wsgi.input over a (possibly endless) supply of chunks, counting what is read."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._pending = b""
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            raise AssertionError("the service asked for the whole body at once")
        while len(self._pending) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                break
            self._pending += chunk
        data, self._pending = self._pending[:size], self._pending[size:]
        self.consumed += len(data)
        return data

    # wsgiref's validator (which falcon.testing applies) wants a whole file-like.
    def readline(self, size: int = -1) -> bytes:
        raise AssertionError("not used by the service")

    def readlines(self, hint: int = -1) -> list[bytes]:
        raise AssertionError("not used by the service")

    def __iter__(self):
        raise AssertionError("not used by the service")


def form_then(filler: Iterator[bytes] | None = None, *, csv: bytes = b"") -> Iterator[bytes]:
    """A multipart body: the start of a `file` part, the CSV, then filler or the end."""
    body, _ = multipart({"file": ("products.csv", csv, "text/csv")})
    closing = body.rindex(b"\r\n--")
    yield body[:closing]
    if filler is None:
        yield body[closing:]
    else:
        yield from filler


def post_raw(client, stream: CountingInput, headers: dict[str, str], *, terminated: bool):
    """A POST whose body is `stream`, with no Content-Length unless `headers` has one."""
    return client.simulate_post(
        "/api/v1/upload",
        headers=headers,
        extras={"wsgi.input": stream, "wsgi.input_terminated": terminated},
    )


def _boundary_headers(first_chunk: bytes) -> dict[str, str]:
    boundary = first_chunk.split(b"\r\n", 1)[0][2:].decode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.fixture
def nothing_recorded(settings, store, runner):
    def check() -> None:
        assert store.unfinished_requests() == []
        assert stored_files(settings) == []
        assert runner.submitted == []

    return check


def endless_body() -> tuple[CountingInput, dict[str, str]]:
    # 800 KiB, far past the 128 KiB body limit: "endless" for the service, while a
    # service that read it all would fail the test instead of hanging it.
    chunks = form_then(itertools.repeat(b"x" * 8192, 100), csv=HEADER)
    first = next(chunks)
    return CountingInput(itertools.chain([first], chunks)), _boundary_headers(first)


def test_declared_oversize_body_is_refused_before_a_byte_is_read(client, nothing_recorded):
    stream, headers = endless_body()
    response = post_raw(client, stream, headers | {"Content-Length": str(10**9)}, terminated=True)

    assert response.status_code == 413
    assert "MAX_UPLOAD_BYTES" in response.json["description"]
    assert stream.consumed == 0
    nothing_recorded()


def test_body_without_length_is_cut_off_one_byte_past_the_limit(client, settings, nothing_recorded):
    # What a chunked upload looks like to the app under servers that pass it through.
    stream, headers = endless_body()

    response = post_raw(client, stream, headers, terminated=True)

    assert response.status_code == 413
    assert response.json["title"] == "Payload too large"
    assert "MAX_UPLOAD_BYTES" in response.json["description"]
    assert settings.max_upload_bytes < stream.consumed <= max_body_bytes(settings) + 1
    nothing_recorded()


def test_body_without_length_within_the_limit_is_accepted(client, runner):
    chunks = form_then(csv=HEADER + ROW)
    first = next(chunks)
    stream = CountingInput(itertools.chain([first], chunks))

    response = post_raw(client, stream, _boundary_headers(first), terminated=True)

    assert response.status_code == 202, response.text
    assert runner.submitted == [response.json["request_id"]]


def test_body_without_length_from_a_server_that_does_not_delimit_it_is_411(
    client, nothing_recorded
):
    # Reading to EOF there could wait on the client's next request: ask for a length.
    stream, headers = endless_body()

    response = post_raw(client, stream, headers, terminated=False)

    assert response.status_code == 411
    assert "Content-Length" in response.json["description"]
    assert stream.consumed == 0
    nothing_recorded()


def padded_csv(size: int) -> bytes:
    """A valid CSV of exactly `size` bytes (the product name takes the slack)."""
    start, end = HEADER + b"1,", b",https://img.example.com/a.jpg\n"
    return start + b"L" * (size - len(start) - len(end)) + end


def test_csv_of_exactly_the_limit_is_accepted_one_byte_more_is_413(client, settings, store, runner):
    # The form's framing must not eat into MAX_UPLOAD_BYTES: the limit is the CSV's.
    # (The cell limit is higher than the padding at this upload limit.)
    at_limit = upload(client, padded_csv(settings.max_upload_bytes))
    over = upload(client, padded_csv(settings.max_upload_bytes + 1))

    assert at_limit.status_code == 202, at_limit.text
    assert over.status_code == 413
    assert f"{settings.max_upload_bytes:,}" in over.json["description"]
    assert runner.submitted == [at_limit.json["request_id"]]

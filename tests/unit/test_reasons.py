"""The words a failed exchange leaves on an image or a webhook attempt (pure)."""

from __future__ import annotations

import http.client
import ssl

import pytest
import urllib3.connection
import urllib3.exceptions as u3

from pipeline import reasons
from pipeline.reasons import Budget, Progress, explain

BUDGET = Budget(body_bytes=1_000_000)


def late(**seen) -> str:
    reason, transient = explain(Progress(timeout=30, expired=True, **seen), BUDGET, None)
    assert not transient  # the time is spent: nothing is retried
    return reason


@pytest.mark.parametrize(
    ("seen", "reason"),
    [
        ({"phase": reasons.CONNECT}, "could not connect within 30s"),
        ({"phase": reasons.TLS}, "TLS handshake not complete after 30s"),
        ({"phase": reasons.STATUS}, "host sent no status line within 30s"),
        (
            {"phase": reasons.STATUS, "status_bytes": 9},
            "status line not complete after 30s (host dripping)",
        ),
        (
            {"phase": reasons.HEADERS, "header_bytes": 40},
            "headers not complete after 30s (host dripping)",
        ),
        (
            {"phase": reasons.HEADERS},
            "headers not complete after 30s (host silent after the status line)",
        ),
        (
            {"phase": reasons.STATUS, "interim": 3},
            "host sent only '100 Continue' (3 times) and no answer within 30s",
        ),
        (
            {"phase": reasons.BODY, "body_bytes": 1234},
            "body not complete after 30s (1234 bytes received)",
        ),
        (
            {"phase": reasons.BODY, "partial_line": True},
            "chunk-size line not complete after 30s (host dripping)",
        ),
        ({"phase": reasons.TRAILERS}, "trailers not complete after 30s (host dripping)"),
    ],
)
def test_a_late_answer_says_where_it_was(seen, reason):
    assert late(**seen) == reason


def test_a_receiver_is_called_a_receiver():
    progress = Progress(timeout=10, peer="receiver", phase=reasons.HEADERS, header_bytes=3)
    progress.expired = True
    assert (
        explain(progress, BUDGET, None)[0] == "headers not complete after 10s (receiver dripping)"
    )


def test_a_body_that_inflates_to_nothing_is_named():
    progress = Progress(timeout=30, phase=reasons.BODY, encoding="gzip", body_bytes=1_000_001)
    progress.stopped = reasons.BODY_TOO_LARGE
    reason, transient = explain(progress, BUDGET, None)
    assert reason == (
        "gzip body over 1000000 bytes on the wire that decodes to only 0 bytes "
        "(empty compressed blocks)"
    )
    assert not transient
    progress.encoding = None
    assert explain(progress, BUDGET, None)[0] == "body over 1000000 bytes on the wire"


def test_connection_errors_lose_urllib3s_reprs():
    refused = ConnectionRefusedError(111, "Connection refused")
    connection = urllib3.connection.HTTPConnection("receiver", 80)  # never connected
    error = u3.NewConnectionError(connection, "Failed to establish a new connection: [Errno 111]")
    error.__cause__ = refused
    reason, transient = explain(Progress(timeout=10, peer="receiver"), BUDGET, error)
    assert (reason, transient) == ("connection failed: connection refused", True)


@pytest.mark.parametrize(
    ("peeked", "reason"),
    [
        (
            b"1.1 400 Bad Request\r\n",
            "TLS handshake failed: the host does not speak HTTPS (plain HTTP on port 8443)",
        ),
        (b"", "TLS handshake failed: the host did not answer in TLS on port 8443"),
    ],
)
def test_tls_to_a_plain_host_is_told_apart(peeked, reason):
    progress = Progress(timeout=30, phase=reasons.TLS, port=8443, peeked=peeked)
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    assert explain(progress, BUDGET, u3.SSLError(error)) == (reason, False)


def test_a_closed_connection_before_any_answer():
    progress = Progress(timeout=30, phase=reasons.STATUS)
    error = u3.ProtocolError("Connection aborted.", http.client.RemoteDisconnected("closed"))
    assert explain(progress, BUDGET, error)[0] == "the host closed the connection without answering"


def test_an_idle_host_is_a_timeout_with_the_read_timeout():
    progress = Progress(timeout=30, idle=15, phase=reasons.BODY, body_bytes=10)
    error = u3.ReadTimeoutError(None, None, "Read timed out.")  # type: ignore[arg-type]
    assert explain(progress, BUDGET, error) == (
        "timed out reading the body (nothing for 15s, 10 bytes received)",
        True,
    )

"""The access log: one parseable line per request, never a key or a secret."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from api.access_log import ACCESS_LINE, ACCESS_LOGGER, REDACTED, access_line, redact_query
from tests.api.support import GOOD_CSV, FakeMonotonic, RecordingRunner, make_client, upload

KEY = "k" * 32


class Ticking:
    """A monotonic clock that moves 5 ms each time it is read."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.005
        return self.now


class FailingRunner(RecordingRunner):
    def submit(self, request_id: str) -> None:
        raise RuntimeError("the driver is broken")


@pytest.fixture
def access(caplog):
    """The access lines logged so far, parsed."""
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)

    def lines() -> list[dict]:
        records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
        parsed = [ACCESS_LINE.fullmatch(r.getMessage()) for r in records]
        assert all(parsed), [r.getMessage() for r in records]
        return [m.groupdict() for m in parsed if m]

    return lines


@pytest.fixture
def quiet_settings(settings):
    return replace(settings, rate_limit_per_minute=0)


def test_a_request_is_one_line_with_status_duration_and_size(
    quiet_settings, store, storage, runner, access, caplog
):
    client = make_client(quiet_settings, store, storage, runner, monotonic=Ticking())
    answer = client.simulate_get("/api/v1/requests", params={"page": "1"})
    (line,) = access()
    assert line == {
        "client": "127.0.0.1",
        "method": "GET",
        "target": "/api/v1/requests?page=1",
        "status": "200",
        "ms": "5.0",  # one tick of the clock between the request and its answer
        "bytes": str(len(answer.content)),
        "request_id": None,
    }
    assert caplog.records[-1].levelno == logging.INFO


def test_behind_a_trusted_proxy_the_line_names_the_client(
    quiet_settings, store, storage, runner, access
):
    behind = replace(quiet_settings, trusted_proxies="10.0.0.2")
    client = make_client(behind, store, storage, runner)
    client.simulate_get(
        "/api/v1/requests", remote_addr="10.0.0.2", headers={"X-Forwarded-For": "198.51.100.9"}
    )
    client.simulate_get("/api/v1/requests", remote_addr="172.16.0.9")  # not through it
    assert [line["client"] for line in access()] == ["198.51.100.9", "172.16.0.9"]


def test_an_upload_names_the_request_it_made(quiet_settings, store, storage, runner, access):
    client = make_client(quiet_settings, store, storage, runner)
    answer = upload(client, GOOD_CSV)
    assert answer.status_code == 202
    (line,) = access()
    assert (line["method"], line["target"], line["status"]) == ("POST", "/api/v1/upload", "202")
    assert line["request_id"] == answer.json["request_id"]


def test_errors_are_logged_once_each(settings, store, storage, access):
    limited = replace(settings, rate_limit_per_minute=60, rate_limit_burst=3)
    client = make_client(limited, store, storage, FailingRunner(), monotonic=FakeMonotonic())
    client.simulate_get("/no/such/route")
    upload(client, b"not,a,csv\n")
    upload(client, GOOD_CSV)  # the runner raises: an unexpected error
    # Never limited (a 429 would be logged), and healthy: not logged.
    assert client.simulate_get("/health").status_code == 200
    client.simulate_get("/api/v1/requests")  # over the burst of 3
    statuses = [(line["target"], line["status"]) for line in access()]
    assert statuses == [
        ("/no/such/route", "404"),
        ("/api/v1/upload", "422"),
        ("/api/v1/upload", "500"),
        ("/api/v1/requests", "429"),
    ]


def test_keys_never_appear_and_secret_parameters_are_redacted(
    quiet_settings, store, storage, runner, access, caplog
):
    client = make_client(replace(quiet_settings, api_keys=KEY), store, storage, runner)
    client.simulate_get("/api/v1/requests", headers={"Authorization": f"Bearer {KEY}"})
    client.simulate_get("/api/v1/requests", headers={"X-API-Key": KEY})
    client.simulate_get("/api/v1/requests", headers={"X-API-Key": "wrong" + KEY})
    client.simulate_get(
        "/api/v1/requests",
        query_string=f"page=2&api_key={KEY}&X-Amz-Signature=abc123&Token=t0k3n&per_page=5",
    )
    assert [line["status"] for line in access()] == ["200", "200", "401", "401"]
    assert access()[-1]["target"] == (
        f"/api/v1/requests?page=2&api_key={REDACTED}&X-Amz-Signature={REDACTED}"
        f"&Token={REDACTED}&per_page=5"
    )
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY not in logged and "abc123" not in logged and "t0k3n" not in logged


def test_get_on_the_upload_routes_is_logged_as_the_405_it_gets(
    quiet_settings, store, storage, runner, access
):
    client = make_client(quiet_settings, store, storage, runner)
    for path in ("/api/v1/upload", "/api/images/upload"):
        client.simulate_get(path)
    assert [(line["target"], line["status"]) for line in access()] == [
        ("/api/v1/upload", "405"),
        ("/api/images/upload", "405"),
    ]


def test_access_log_off(quiet_settings, store, storage, runner, access):
    client = make_client(replace(quiet_settings, access_log=False), store, storage, runner)
    assert client.simulate_get("/api/v1/requests").status_code == 200
    assert client.simulate_get("/api/v1/status/nope").status_code == 404
    assert access() == []


def test_health_is_logged_only_when_unhealthy(quiet_settings, store, storage, runner, access):
    checks: dict[str, dict[str, bool | str]] = {"store": {"healthy": True}}
    health = make_client(quiet_settings, store, storage, runner, health=lambda: dict(checks))
    assert health.simulate_get("/health").status_code == 200
    assert access() == []  # load balancers poll it: healthy answers stay out of the log
    checks["store"] = {"healthy": False, "error": "connection refused"}
    assert health.simulate_get("/health").status_code == 503
    assert [(line["target"], line["status"]) for line in access()] == [("/health", "503")]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("page=2&per_page=50", "page=2&per_page=50"),
        ("key=abc", f"key={REDACTED}"),
        ("apiKey=abc&access_token=def", f"apiKey={REDACTED}&access_token={REDACTED}"),
        ("client_secret=s&password=p", f"client_secret={REDACTED}&password={REDACTED}"),
        (
            "X-Amz-Credential=AKIA%2F1&X-Amz-Date=20260101&X-Amz-Signature=ff",
            f"X-Amz-Credential={REDACTED}&X-Amz-Date={REDACTED}&X-Amz-Signature={REDACTED}",
        ),
        ("sig=abc&sv=2024", f"sig={REDACTED}&sv=2024"),  # an Azure SAS
        ("api%5Fkey=abc", f"api%5Fkey={REDACTED}"),  # the name is judged decoded
        ("token", f"token={REDACTED}"),
    ],
)
def test_redact_query(query, expected):
    assert redact_query(query) == expected


def test_characters_that_could_forge_a_line_are_encoded():
    line = access_line(
        "127.0.0.1", "GET", '/a b"\n127.0.0.1 "GET /x" 200', "q=\r\n", 404, 0.001, 12
    )
    assert "\n" not in line and "\r" not in line
    parsed = ACCESS_LINE.fullmatch(line)
    assert parsed and parsed["status"] == "404" and parsed["target"].startswith("/a%20b%22%0A")

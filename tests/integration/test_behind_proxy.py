"""Behind a load balancer (TRUSTED_PROXIES): the real waitress passes X-Forwarded-For
to the app, which limits and logs each client, not the balancer."""

from __future__ import annotations

import pytest

from tests.integration.service import Service

pytestmark = pytest.mark.integration

PATH = "/api/v1/status/" + "0" * 32


def get(service: Service, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return service.http.request("GET", service.base_url + PATH, headers=headers).status


@pytest.mark.parametrize("trusted", ["127.0.0.1", ""])
def test_clients_behind_the_balancer_are_told_apart(tmp_path, trusted):
    # The test client is the "balancer" (it connects from 127.0.0.1).
    service = Service(
        tmp_path / "data",
        TRUSTED_PROXIES=trusted,
        RATE_LIMIT_PER_MINUTE="1",
        RATE_LIMIT_BURST="1",
    ).start()
    try:
        first = [get(service, "198.51.100.9"), get(service, "198.51.100.9")]
        other = get(service, "198.51.100.10")
        logs = service.logs()
    finally:
        service.stop()
    assert first == [404, 429]
    if trusted:
        assert other == 404  # its own bucket
        assert f'198.51.100.10 "GET {PATH}" 404 ' in logs
    else:
        assert other == 429  # the header means nothing: one bucket for the peer
        assert f'127.0.0.1 "GET {PATH}" 429 ' in logs
        assert "198.51.100" not in logs

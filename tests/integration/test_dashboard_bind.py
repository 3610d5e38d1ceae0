"""The embedded cluster's dashboard is reachable where the API is, and no further.

The whole of 127.0.0.0/8 is this machine's loopback, so a dashboard bound to
127.0.0.1 refuses connections on 127.0.0.2, as one bound to a LAN address
refuses them from other interfaces; one bound to every interface answers on both.
"""

from __future__ import annotations

import socket
import urllib.request

import pytest

from pipeline.cluster import close_client, dashboard_url, start_client
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except ConnectionRefusedError:
        return False


def page(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read()


@pytest.mark.parametrize(
    ("dashboard_address", "reachable", "unreachable"),
    [
        # The default's shape (a port alone) binds the API's HOST, not every interface.
        (":0", "127.0.0.1", "127.0.0.2"),
        # An address a user gives is kept, even when it is not the API's.
        ("127.0.0.2:0", "127.0.0.2", "127.0.0.1"),
    ],
)
def test_embedded_dashboard_listens_where_configured(dashboard_address, reachable, unreachable):
    settings = Settings.from_env(
        {
            "HOST": "127.0.0.1",
            "DASK_DASHBOARD_ADDRESS": dashboard_address,
            "DASK_WORKERS": "1",
            "DASK_THREADS_PER_WORKER": "1",
        }
    )
    client, description = start_client(settings)
    try:
        assert client.cluster is not None  # no scheduler address: a LocalCluster of its own
        port = client.cluster.scheduler_info["services"]["dashboard"]
        assert answers(reachable, port)
        assert not answers(unreachable, port)
        # The link the API shows (startup log, /health, status) opens the dashboard.
        link = dashboard_url(client, settings)
        assert link == f"http://{reachable}:{port}/status"
        assert f"dashboard {link}" in description
        assert b"Dask" in page(link)
    finally:
        close_client(client)

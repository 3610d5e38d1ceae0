"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from tests.integration.dask_cli import DaskCliCluster
from tests.servers import free_port


@pytest.fixture
def cluster(tmp_path):
    """A real Dask cluster from the CLI: a scheduler and two worker processes."""
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    cluster = DaskCliCluster(logs).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto in server mode on a free loopback port, one per module: an S3 endpoint over HTTP."""
    from moto.server import ThreadedMotoServer  # only the modules that use S3 pay for moto

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_credentials(monkeypatch) -> dict[str, str]:
    """Credentials for moto, set in this process's environment for the test and returned
    for a child process's. moto takes any, but boto3 signs nothing without some."""
    credentials = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    return credentials

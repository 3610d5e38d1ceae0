"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from tests.integration.dask_cli import DaskCliCluster


@pytest.fixture
def cluster(tmp_path):
    """A real Dask cluster from the CLI: a scheduler and two worker processes."""
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    cluster = DaskCliCluster(logs).start()
    yield cluster
    cluster.stop()

"""A port already taken fails the start at once, before any cluster is started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.integration.service import ROOT

pytestmark = pytest.mark.integration


def test_a_port_in_use_is_said_before_the_cluster_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PORT": str(port), "DATA_DIR": str(tmp_path / "data")}
        done = subprocess.run(
            [sys.executable, "-m", "api"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert "Address already in use" in done.stderr
    assert "LocalCluster" not in done.stderr  # no cluster was started for nothing

"""Run the real service (`python -m api`, waitress + Dask) as a subprocess on loopback,
and the batch CLI (`python -m pipeline run`) as a script would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import urllib3

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def run_pipeline(
    *args: str, env: dict[str, str], root: Path = ROOT, timeout: float = 180
) -> subprocess.CompletedProcess:
    """`python -m pipeline run ARGS` in a new interpreter from the tree `root` (a benchmark
    may name another), its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Service:
    def __init__(self, data_dir: Path, **env: str):
        self.port = free_port()
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"service-{self.port}.log"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "DATA_DIR": str(data_dir),
            "ALLOW_PRIVATE_NETWORKS": "1",
            "DASK_WORKERS": "1",
            "DASK_THREADS_PER_WORKER": "2",
            "DASK_DASHBOARD_ADDRESS": "",
            # Tests poll fast from one address; rate limiting has its own tests.
            "RATE_LIMIT_PER_MINUTE": "0",
            **env,
        }
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=30))
        self.process: subprocess.Popen | None = None
        # A port picked here can be taken by another process (another test worker's
        # Dask cluster, say) before the service binds it: then start() picks again.
        self._own_port = "PORT" not in env

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> Service:
        for _ in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                self.port = free_port()
                self.env["PORT"] = str(self.port)
        return self._start(timeout)

    def _start(self, timeout: float) -> Service:
        self._log = self.log_path.open("ab")
        started_at = self._log.tell()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own process group (with its LocalCluster's workers), which a test
            # can kill whole, as a machine or container going away would.
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.close()
                this_start = self.log_path.read_bytes()[started_at:].decode(errors="replace")
                if self._own_port and "Address already in use" in this_start:
                    raise PortTaken(self.port)
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if self.get("/health").status == 200:
                    return self
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"service did not become healthy in {timeout}s:\n{self.logs()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: the process dies at once, no `finally`, no cleanup (a crash, an OOM kill)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self._log.close()

    def kill_group(self) -> None:
        """SIGKILL the API process and every process it started (its Dask workers)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self._log.close()

    def restart(self, timeout: float = 120.0) -> Service:
        """Start again on the same port and data directory, as a supervisor would."""
        assert self.process is not None and self.process.poll() is not None
        return self.start(timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path_or_url: str) -> urllib3.BaseHTTPResponse:
        url = path_or_url if path_or_url.startswith("http") else self.base_url + path_or_url
        return self.http.request("GET", url)

    def get_json(self, path: str) -> dict:
        response = self.get(path)
        assert response.status == 200, (response.status, response.data)
        return json.loads(response.data)

    def upload(
        self, csv: bytes, path: str = "/api/v1/upload", **fields: str
    ) -> urllib3.BaseHTTPResponse:
        """What `curl -F file=@products.csv URL` sends."""
        form: dict[str, str | tuple[str, bytes, str]] = {
            "file": ("products.csv", csv, "text/csv"),
            **fields,
        }
        return self.http.request("POST", self.base_url + path, fields=form)

    def wait_final(
        self, request_id: str, timeout: float = 180.0, path: str = "/api/v1/status/"
    ) -> tuple[dict, list[dict]]:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.get_json(path + request_id)
            seen.append(status)
            if status["status"] in ("completed", "completed_with_errors", "failed", "cancelled"):
                return status, seen
            time.sleep(0.1)
        raise AssertionError(
            f"request {request_id} not final after {timeout}s: {seen[-1]}\n{self.logs()}"
        )


class PortTaken(Exception):
    """The port picked for the service was taken before it could bind it."""

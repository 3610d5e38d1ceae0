"""A real Dask cluster from the Dask CLI: a scheduler and workers as separate OS processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from distributed import Client

from tests.servers import free_port

DASK = str(Path(sys.executable).with_name("dask"))


class DaskCliCluster:
    def __init__(self, log_dir: Path, workers: int = 2, nthreads: int = 2):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.n_workers = workers
        self.nthreads = nthreads
        self.processes: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, *args: str) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [DASK, *args], stdout=log, stderr=subprocess.STDOUT, env={**os.environ}
        )

    def start(self, timeout: float = 90.0) -> DaskCliCluster:
        self._spawn(
            "scheduler",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-dashboard",
        )
        for i in range(1, self.n_workers + 1):
            # --no-nanny: the CLI process is the worker, so its pid is the worker's
            self._spawn(
                f"w{i}",
                "worker",
                self.address,
                "--name",
                f"w{i}",
                "--nthreads",
                str(self.nthreads),
                "--no-nanny",
                "--no-dashboard",
                "--preload",  # as docker-compose starts its workers
                "pipeline.worker_preload",
            )
        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=f"{timeout}s") as client:
            while len(client.scheduler_info(n_workers=-1)["workers"]) < self.n_workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"workers did not join:\n{self.logs()}")
                time.sleep(0.2)
        return self

    def worker_pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if name != "scheduler"}

    def kill(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGKILL)
        self.processes[name].wait(30)

    def stop(self) -> None:
        # Workers first, while the scheduler is there to see them leave: a worker whose
        # scheduler closes under it sits in its shutdown reconnecting (for its 30 s
        # timeout), so terminating all at once cost the whole grace below now and then.
        workers = [p for name, p in self.processes.items() if name != "scheduler"]
        _terminate(workers)
        _terminate([self.processes["scheduler"]])

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def _terminate(processes: list[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM, wait for the exits, SIGKILL what is left after `grace` seconds."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

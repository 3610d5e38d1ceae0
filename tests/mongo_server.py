"""SecantusDB, a MongoDB wire-protocol server, as a subprocess on a free loopback port.

A test tool only: SecantusDB is GPL-2.0 and beta, so it lives in its own
virtualenv (`.venv-secantus`, made by `make secantusdb`), runs as a separate
process, and nothing in the project imports it. pymongo talks to it over the
real wire protocol, exactly as it talks to mongod.

It starts in about half a second with in-memory storage and, like a one-node
replica set, advertises itself as the primary of set ``secantus``; the URI asks
for a direct connection so the driver never goes looking for other members.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
SECANTUS_VENV = ROOT / ".venv-secantus"
SECANTUSD = SECANTUS_VENV / "bin" / "secantusd-py"
INSTALL_COMMAND = "make secantusdb"


def fresh_database_name(prefix: str = "imagepipe_test") -> str:
    """A database name no other test (or earlier run on the same server) uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


# Looked up here, not in the forked child, where loading a library is not safe.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the thread that started us ends.

    A fixture's teardown does not run when pytest itself is killed (SIGKILL, or
    SIGTERM, which Python does not turn into an exception); this leaves no
    server behind even then. Linux only; elsewhere teardown is the only stop.
    The "parent" is the starting *thread*: start the server from the main thread.
    """
    assert _prctl is not None
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class SecantusServer:
    """`secantusd-py` on 127.0.0.1 with ``:memory:`` storage; its log in `workdir`."""

    def __init__(self, workdir: Path, executable: Path = SECANTUSD):
        self.workdir = workdir
        self.executable = executable
        self.port = free_port()
        self.log_path = workdir / f"secantusd-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, timeout: float = 30.0) -> SecantusServer:
        # An empty config file turns off the search for ./secantusd.toml,
        # ~/.secantus/ and /etc/secantus/: nothing on the machine changes the server.
        config = self.workdir / "secantusd.toml"
        config.touch()
        # :memory: storage still makes a scratch directory with tempfile; keep it here.
        scratch = self.workdir / "tmp"
        scratch.mkdir(exist_ok=True)
        command = [
            str(self.executable),
            "--config", str(config),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--storage-path", ":memory:",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.workdir,
                env={**os.environ, "TMPDIR": str(scratch)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest only
                preexec_fn=_die_with_parent if _prctl is not None else None,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"secantusd-py exited with {self.process.returncode}:\n{self.logs()}"
                )
            try:
                client: MongoClient
                with MongoClient(self.uri, serverSelectionTimeoutMS=250) as client:
                    client.admin.command("ping")
                    pid = client.admin.command("serverStatus").get("pid")
            except PyMongoError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"secantusd-py did not answer ping in {timeout}s ({exc}):\n{self.logs()}"
                    ) from exc
            else:
                # free_port() only found the port free a moment ago: make sure the
                # server answering is ours, not another one that took the port since.
                if pid in (None, self.process.pid):
                    return
                raise RuntimeError(
                    f"port {self.port} is answered by another server (pid {pid}):\n{self.logs()}"
                )
            time.sleep(0.05)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the whole process group after `grace` seconds.

        A clean stop takes about 2 s: the server waits that long for its accept thread.
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.workdir / "tmp", ignore_errors=True)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> SecantusServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

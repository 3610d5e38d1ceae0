"""Connect to Dask: an existing scheduler when configured, else a LocalCluster."""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import urlsplit

import dask.config
from distributed import Client, LocalCluster
from distributed.comm import connect

from pipeline.errors import ConfigError
from pipeline.settings import Settings

log = logging.getLogger(__name__)

# Warms each worker before its first task; `dask worker --preload` it on a cluster.
PRELOAD = "pipeline.worker_preload"

# Dask defaults changed for this workload; values a user sets (Dask config
# files, DASK_* variables) still win, and docker-compose sets the same.
# - The workers' statistical profiler is off. Every 10 ms it takes the stack
#   of every thread (a batch task has ~18) with sys._current_frames() and the
#   event loop walks those frames later, by which time their threads have
#   moved on: on CPython 3.11 that can read freed frames. A 100k-image
#   benchmark run lost a worker to a segfault in its event-loop thread
#   (dmesg: "segfault at 1 ip 0000000000000001"); the same pattern crashes
#   other in-process profilers (DataDog/dd-trace-py#13567). It also cost ~3%
#   of throughput. Profile with py-spy from outside the process, or turn it
#   back on for a session: DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=True.
# - The system monitor does not read every disk's counters twice a second,
#   and each event loop checks its own health every 100 ms, not 20 ms (a
#   blocked loop is still reported after `tick.limit`, 3 s). With the
#   profiler off these halve an idle embedded cluster's CPU (52 -> 28 ms/s).
# - No scheduler-side queuing (worker-saturation inf): tasks go to a worker as
#   soon as they are submitted, where they wait in its priority order. The
#   driver bounds what is in flight itself, and with queuing a worker already
#   held the next batch of a big request when a newcomer's higher-priority
#   batch arrived, so the newcomer waited one more batch on every thread
#   (a 100-image request beside a 20k one: 3.5 -> 2.8 s).
DASK_DEFAULTS = {
    "distributed": {
        "scheduler": {"worker-saturation": float("inf")},
        "worker": {"profile": {"enabled": False}},
        "admin": {"system-monitor": {"disk": False}, "tick": {"interval": "100ms"}},
    }
}


def start_client(settings: Settings) -> tuple[Client, str]:
    """Return a client and a one-line description for the startup log."""
    if settings.dask_scheduler_address:
        # Waits up to Dask's connect timeout (`distributed.comm.timeouts.connect`,
        # 30 s, or DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT) for the scheduler; the
        # same timeout bounds the client's reconnecting when the scheduler goes away.
        client = Client(settings.dask_scheduler_address)
        address, dashboard = settings.dask_scheduler_address, dashboard_url(client, settings)
        return client, f"dask: scheduler {address}, dashboard {dashboard}"
    workers = settings.dask_workers or os.cpu_count() or 1
    dask.config.update_defaults(DASK_DEFAULTS)  # before the scheduler and nannies read them
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=settings.dask_threads_per_worker,
        processes=True,
        dashboard_address=dashboard_listen(settings.dask_dashboard_address, settings.host),
        silence_logs=logging.WARNING,
        preload=[PRELOAD],
    )
    client = Client(cluster)
    dashboard = dashboard_url(client, settings) or "disabled"
    return client, (
        f"dask: LocalCluster, {workers} workers x {settings.dask_threads_per_worker} threads, "
        f"dashboard {dashboard} (set DASK_SCHEDULER_ADDRESS=tcp://host:8786 to use a cluster)"
    )


def reconnect(address: str) -> Client | None:
    """A new client of the scheduler at `address`, or None while it cannot be reached.

    For when a client has given up reconnecting and closed. The scheduler is
    probed first because a Client whose first connection fails leaves its
    event-loop thread running, one more on every attempt.
    """

    async def probe() -> None:
        comm = await connect(address)
        await comm.close()

    try:
        asyncio.run(probe())
        # The default client, as the one it replaces was (`as_completed` uses its loop).
        return Client(address)
    except OSError as exc:
        log.warning("Dask scheduler %s still unreachable: %s", address, exc)
        return None


def close_client(client: Client) -> None:
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


# Hosts that mean "every interface": the link then names loopback, as Dask's does.
_ALL_INTERFACES = frozenset({"", "0.0.0.0", "::"})


def dashboard_listen(address: str, api_host: str) -> list[tuple[str, int]] | None:
    """Where the embedded cluster's dashboard listens: (host, port) pairs, None when off.

    DASK_DASHBOARD_ADDRESS is Dask's syntax, `[host]:port[,...]`. Dask reads a
    port without a host (the default ":8787") as every interface, which would
    put the dashboard (which shows every task's key and the workers' logs) on
    the network while the API listens on loopback; so a bare port binds where
    the API binds (HOST), and an address with a host is kept as given
    ("0.0.0.0:8787" for every interface). Pairs rather than "host:port"
    strings, because Dask splits a string at every colon and so cannot take an
    IPv6 host.
    """
    if not address.strip():
        return None
    listen = []
    for part in address.split(","):
        host, colon, port = part.strip().rpartition(":")
        host = host.strip("[]") if colon else ""
        try:
            number = int(port)
        except ValueError:
            number = -1
        if not 0 <= number <= 65535:
            raise ConfigError(
                f"DASK_DASHBOARD_ADDRESS must be [host]:port, e.g. :8787, got {address!r}"
            )
        listen.append((host or api_host, number))
    return listen


def dashboard_url(client: Client, settings: Settings) -> str | None:
    """The dashboard's address, or None when our LocalCluster runs without one.

    (`client.dashboard_link` formats a link even then: the scheduler's HTTP
    server keeps serving health and metrics routes on that port.)
    """
    if settings.dask_scheduler_address:
        return client.dashboard_link
    listen = dashboard_listen(settings.dask_dashboard_address, settings.host)
    if not listen:
        return None
    link = client.dashboard_link
    host = listen[0][0]
    if host in _ALL_INTERFACES or not link:
        return link  # it names the scheduler's own address, loopback
    # Bound to one address: Dask's link names the scheduler's (127.0.0.1), which
    # may not be where the dashboard listens.
    parts = urlsplit(link)
    netloc = f"[{host}]" if ":" in host else host
    return parts._replace(netloc=f"{netloc}:{parts.port}" if parts.port else netloc).geturl()

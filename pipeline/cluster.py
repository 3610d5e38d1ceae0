"""Connect to Dask: an existing scheduler when configured, else a LocalCluster."""

from __future__ import annotations

import logging
import os

from distributed import Client, LocalCluster

from pipeline.settings import Settings


def start_client(settings: Settings) -> tuple[Client, str]:
    """Return a client and a one-line description for the startup log."""
    if settings.dask_scheduler_address:
        client = Client(settings.dask_scheduler_address, timeout="20s")
        address, dashboard = settings.dask_scheduler_address, dashboard_url(client, settings)
        return client, f"dask: scheduler {address}, dashboard {dashboard}"
    workers = settings.dask_workers or os.cpu_count() or 1
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=settings.dask_threads_per_worker,
        processes=True,
        dashboard_address=settings.dask_dashboard_address or None,
        silence_logs=logging.WARNING,
    )
    client = Client(cluster)
    dashboard = dashboard_url(client, settings) or "disabled"
    return client, (
        f"dask: LocalCluster, {workers} workers x {settings.dask_threads_per_worker} threads, "
        f"dashboard {dashboard} (set DASK_SCHEDULER_ADDRESS=tcp://host:8786 to use a cluster)"
    )


def close_client(client: Client) -> None:
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


def dashboard_url(client: Client, settings: Settings) -> str | None:
    """The dashboard's address, or None when our LocalCluster runs without one.

    (`client.dashboard_link` formats a link even then: the scheduler's HTTP
    server keeps serving health and metrics routes on that port.)
    """
    if not settings.dask_scheduler_address and not settings.dask_dashboard_address:
        return None
    return client.dashboard_link

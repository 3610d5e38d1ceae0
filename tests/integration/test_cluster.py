"""The service against a real Dask cluster: separate scheduler and worker processes.

Shows the move off the laptop is configuration: DASK_SCHEDULER_ADDRESS points
the same service at the cluster, and the images are processed in the worker
processes, not in the API process.
"""

from __future__ import annotations

import json
import os
import sys

import dask.config
import pytest
from distributed import Client

from pipeline.cluster import close_client, start_client
from pipeline.settings import Settings
from tests import imagefactory as images
from tests.integration.service import Service

pytestmark = pytest.mark.integration


def test_request_runs_in_the_cluster_worker_processes(tmp_path, cluster, image_server):
    service = Service(
        tmp_path / "data", DASK_SCHEDULER_ADDRESS=cluster.address, BATCH_SIZE="2"
    ).start()
    try:
        health = service.get_json("/health")
        assert health["dask"]["workers"] == 2
        assert health["dask"]["scheduler"] == cluster.address

        with Client(cluster.address, timeout="30s") as client:
            client.get_task_stream()  # starts recording on the scheduler
            pid_of = client.run(os.getpid)  # worker address -> OS pid
            urls = [
                image_server.add(
                    f"/{i}.jpg", images.jpeg_rgb(), content_type="image/jpeg", delay=0.2
                )
                for i in range(8)
            ]
            rows = [f'{n + 1},P{n},"{urls[2 * n]},{urls[2 * n + 1]}"' for n in range(4)]
            csv = "S. No.,Product Name,Input Image Urls\n" + "\n".join(rows) + "\n"
            response = service.upload(csv.encode())
            request_id = json.loads(response.data)["request_id"]
            final, _ = service.wait_final(request_id)
            stream = client.get_task_stream()

        assert final["status"] == "completed" and final["processed_images"] == 8
        batches = [t for t in stream if str(t["key"]).startswith(f"process-batch-{request_id}")]
        assert len(batches) == 4
        ran_in = {pid_of[t["worker"]] for t in batches}
        assert ran_in <= set(cluster.worker_pids().values())
        assert service.pid not in ran_in
        assert len(ran_in) == 2  # the work was spread over both worker processes
    finally:
        service.stop()


# What a worker's first task would otherwise load. (The check runs as a lambda:
# cloudpickle sends those by value; workers cannot import this test module.)
WARM = frozenset({"PIL.WebPImagePlugin", "PIL.TiffImagePlugin", "pyarrow.parquet"})


def test_workers_are_warm_before_their_first_task(cluster):
    # The preload (`dask worker --preload pipeline.worker_preload`), as in docker-compose...
    with Client(cluster.address, timeout="30s") as client:
        assert set(client.run(lambda: set(sys.modules) >= WARM).values()) == {True}
    # ...and the embedded LocalCluster's workers.
    client, _ = start_client(Settings.from_env({"DASK_WORKERS": "1"}))
    try:
        assert list(client.run(lambda: set(sys.modules) >= WARM).values()) == [True]
        # ...with Dask's in-process profiler off (see pipeline/cluster.py).
        profiling = client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
        assert list(profiling.values()) == [False]
    finally:
        close_client(client)

"""Dask worker preload: get a worker ready before its first task.

`dask worker ... --preload pipeline.worker_preload` (the LocalCluster and
docker-compose workers use it). A cold worker otherwise spends its first
task importing pyarrow's Parquet writer and every Pillow plugin (Image.open
with a list of formats loads them all): ~0.35 s on the first request after a
start, measured as the stage task's time (0.37 s cold, 0.03 s warm).
Without it everything still works, only the first request is slower.
"""

from __future__ import annotations

from PIL import Image

from pipeline import tasks
from pipeline.worker_memory import tune_allocator


def dask_setup(worker) -> None:
    tune_allocator()
    Image.init()
    # What the first stage and batch tasks would otherwise load lazily.
    tasks.warm_up()

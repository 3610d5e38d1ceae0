"""The compute floor: bare Pillow decoding and re-encoding from memory, one process per core."""

from __future__ import annotations

import io
import os
import time
from concurrent.futures import ProcessPoolExecutor

from PIL import Image

# The same encoder options the pipeline uses (pipeline/transform.py), so the
# ratio measures the pipeline's overhead, not a different encoding choice.
PIPELINE_ENCODER = {"quality": 50, "optimize": True, "subsampling": "4:2:0"}
PILLOW_DEFAULTS = {"quality": 50}


def _recode(args: tuple[bytes, dict]) -> int:
    data, options = args
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        out = io.BytesIO()
        im.save(out, "JPEG", **options)
    return out.tell()


def measure(images: list[bytes], options: dict, processes: int | None = None) -> float:
    """Images per second over `images`, all cores busy."""
    processes = processes or os.cpu_count() or 1
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_recode, [(images[0], options)] * processes))  # warm the processes
        start = time.perf_counter()
        list(pool.map(_recode, [(d, options) for d in images], chunksize=4))
        return len(images) / (time.perf_counter() - start)

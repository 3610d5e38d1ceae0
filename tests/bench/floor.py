"""The compute floor: bare Pillow decoding and re-encoding from memory, one process per core.

`measure` re-encodes at full size (the throughput leg); `measure_resized` fits each
image inside a box first (the resize512 leg), as the pipeline does: a JPEG decoded
at a reduced scale with `draft` where the box allows, then the pipeline's own
filter (pipeline/transform.py RESIZE_FILTER).
"""

from __future__ import annotations

import io
import os
import time
from concurrent.futures import ProcessPoolExecutor

from PIL import Image

from pipeline.options import fit_inside
from pipeline.transform import REDUCING_GAP, RESIZE_FILTER

# The same encoder options the pipeline uses (pipeline/transform.py), so the
# ratio measures the pipeline's overhead, not a different encoding choice.
PIPELINE_ENCODER = {"quality": 50, "optimize": True, "subsampling": "4:2:0"}
PILLOW_DEFAULTS = {"quality": 50}
# How the pipeline shrinks an image into a box, after `draft`: its own filter and
# reducing gap (read from pipeline/transform.py, so the floor does the same work).
RESAMPLE = RESIZE_FILTER


def _recode(args: tuple[bytes, dict]) -> int:
    data, options = args
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        im = opened if opened.mode in ("RGB", "L") else opened.convert("RGB")
        out = io.BytesIO()
        im.save(out, "JPEG", **options)
    return out.tell()


def _resize_recode(args: tuple[bytes, tuple[int, int], dict]) -> float:
    """CPU seconds to fit one image inside the box and encode it."""
    data, (max_width, max_height), options = args
    start = time.process_time()
    with Image.open(io.BytesIO(data)) as im:
        size = fit_inside(im.width, im.height, max_width, max_height)
        if im.format == "JPEG":
            im.draft(None, size)  # a no-op unless the box is at most half the source
        im.load()
        out = im if im.mode in ("RGB", "L") else im.convert("RGB")
        if out.size != size:
            out = out.resize(size, RESAMPLE, reducing_gap=REDUCING_GAP)
        out.save(io.BytesIO(), "JPEG", **options)
    return time.process_time() - start


def measure(images: list[bytes], options: dict, processes: int | None = None) -> float:
    """Images per second over `images`, all cores busy."""
    return _measure(_recode, [(d, options) for d in images], processes)[0]


def measure_resized(
    images: list[bytes], box: tuple[int, int], options: dict, processes: int | None = None
) -> tuple[float, float]:
    """Images per second over `images` fitted inside `box`, all cores busy, and the
    CPU ms per image they took (which other tenants of the machine move less)."""
    ips, cpu = _measure(_resize_recode, [(d, box, options) for d in images], processes)
    return ips, 1000 * sum(cpu) / len(cpu)


def _measure(work, tasks: list, processes: int | None) -> tuple[float, list]:
    processes = processes or os.cpu_count() or 1
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(work, tasks[:1] * processes))  # warm the processes
        start = time.perf_counter()
        results = list(pool.map(work, tasks, chunksize=4))
        return len(tasks) / (time.perf_counter() - start), results

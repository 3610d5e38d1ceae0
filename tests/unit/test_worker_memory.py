"""Allocator thresholds in a worker started the way Dask's nanny starts one."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# Allocates and frees a 12 MB buffer (a 2-megapixel RGB image) 50 times and
# prints the page faults that cost, before and after tune_allocator().
PROBE = """
import resource
from pipeline.worker_memory import tune_allocator

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        buffer = bytearray(12 * 1024 * 1024)
        buffer[::4096] = b"x" * len(buffer[::4096])  # touch every page, as a decoder does
        del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

untuned = faults()
print(untuned, tune_allocator(), tune_allocator(), faults())
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_image_sized_buffers_are_reused_not_mapped_afresh_each_time():
    # What Dask's nanny puts in every worker's environment.
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    untuned, first, second, tuned = int(out[0]), out[1], out[2], int(out[3])
    assert (first, second) == ("True", "True")
    # Untuned: every buffer is a fresh mmap, 3,072 pages faulted in each time.
    assert untuned > 50 * 3000
    # Tuned: the heap keeps the memory; only the first buffer faults its pages in.
    assert tuned < 2 * 3072, (untuned, tuned)

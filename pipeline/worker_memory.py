"""Allocator settings for worker processes that decode and encode images.

Dask's nanny starts every worker with `MALLOC_TRIM_THRESHOLD_=65536`, to give
memory back to the OS promptly (good for numpy chunks). Setting any glibc
malloc threshold also switches off glibc's dynamic mmap threshold, so every
buffer over 128 KiB (each decoded image, each encoder buffer) becomes a fresh
mmap whose pages the kernel must fault in and zero, then unmap again. On the
benchmark corpus that was ~4 ms of kernel time per image, a fifth of the
whole decode and re-encode.

`tune_allocator()` restores what glibc's dynamic tuning would reach: buffers
up to 32 MiB come from the heap and are reused; the heap gives memory back
once 64 MiB are free at its top. Larger images (a 50-megapixel limit allows
150 MB decoded) are still mapped and unmapped on their own. Called by the
batch task, once per process, so it holds on any worker (a LocalCluster's, a
`dask worker` started by hand, one that joined after a scheduler restart).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's own ceiling for the dynamic threshold
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # the ratio glibc's dynamic tuning keeps


@functools.cache
def tune_allocator() -> bool:
    """Set the thresholds once per process; False where the C library has no mallopt."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc (macOS, Windows): nothing to undo there
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    if not ok:
        log.warning("could not set malloc thresholds; image buffers will be mapped per use")
    return ok

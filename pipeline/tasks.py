"""The functions Dask runs on workers. Inputs are small descriptors.

Each task builds what it needs (storage, HTTP pool) from a picklable
`JobSpec`, reads its own slice of the manifest from shared storage, and
returns plain results; it never touches the record store (only the driver
writes records). A failure of one image is an `ImageResult(ok=False)`; only
a failure of the whole batch (manifest unreadable) raises, so Dask retries
it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import TypeVar

from pipeline import manifest
from pipeline.csv_input import CsvLimits, parse_products
from pipeline.errors import FetchError, ImageRejected, StorageError
from pipeline.fetch import FetchConfig, Fetcher
from pipeline.hosts import HostPolicy, limiter_for
from pipeline.keys import cancel_marker_key, input_csv_key, manifest_key, output_key
from pipeline.models import ImageItem, ImageResult, image_items
from pipeline.options import DEFAULT_OPTIONS, OutputOptions
from pipeline.settings import DEFAULTS
from pipeline.storage import Storage, StorageConfig, storage_for
from pipeline.transform import compress
from pipeline.worker_memory import tune_allocator

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class JobSpec:
    request_id: str
    storage: StorageConfig
    fetch: FetchConfig
    options: OutputOptions = DEFAULT_OPTIONS
    max_pixels: int = DEFAULTS.max_pixels
    max_image_memory: int = DEFAULTS.max_image_memory  # 0: derived from max_pixels
    fetch_concurrency: int = DEFAULTS.fetch_concurrency
    hosts: HostPolicy = field(default_factory=HostPolicy)


def stage_manifest(spec: JobSpec, batch_size: int, limits: CsvLimits) -> manifest.ManifestInfo:
    """CSV on storage -> validated products -> Parquet manifest on storage.

    A manifest staged before (by this process or one that owned the request
    earlier) is used as it is: never rewritten under tasks that may be reading it.
    """
    storage = storage_for(spec.storage)
    key = manifest_key(spec.request_id)
    staged = manifest.describe(storage, key)
    if staged is not None:
        return staged
    products = parse_products(storage.get(input_csv_key(spec.request_id)), limits)
    return manifest.write_manifest(storage, key, image_items(products), batch_size)


def warm_up() -> None:
    """Load what tasks use lazily (for a worker preload), so no request pays for it."""
    import pyarrow.parquet  # noqa: F401  (the writer's modules load on first use)

    manifest.to_table([])


def process_batch(
    spec: JobSpec, manifest_key: str, batch: int, only: frozenset[tuple[int, int]] | None = None
) -> list[ImageResult]:
    """Download, compress and store one batch; `only` limits it to images still pending.

    Each URL is fetched once: a repeat stored in this batch is skipped (its first
    slot's task gives it its result), and a first slot's result is given to all
    its repeats too. With `only`, a URL is processed when any of its slots is named.
    """
    tune_allocator()
    storage = storage_for(spec.storage)
    items = [i for i in manifest.read_batch(storage, manifest_key, batch) if i.copy_of is None]
    if only is not None:
        items = [i for i in items if not only.isdisjoint(_slots(i))]
    if not items:
        return []
    cancelled = CancelCheck(storage, spec.request_id)
    if cancelled():
        return []
    # Every attempt of every download goes through the process's per-host limiter,
    # shared with the other batches this worker runs at the same time.
    fetcher = Fetcher(spec.fetch, host_gate=limiter_for(spec.hosts).slot)
    # Downloads overlap (network latency hidden); compression happens here, in
    # the task's thread, so CPU parallelism stays what the worker was sized for.
    # An image skipped for a cancel has no result: it stays pending until the
    # driver marks it cancelled.
    fetched = as_fetched(
        items, lambda i: _download(fetcher, i.input_url, cancelled), spec.fetch_concurrency
    )
    # Closed on the way out whatever happens: a failure in _finish must not leave
    # download threads waiting until the exception object is collected.
    with contextlib.closing(fetched):
        return [
            replace(result, row=row, position=position)
            for item, downloaded in fetched
            if (result := _finish(spec, item, downloaded)) is not None
            for row, position in _slots(item)
        ]


def as_fetched(
    items: Sequence[T], fetch: Callable[[T], R], concurrency: int
) -> Generator[tuple[T, R], None, None]:
    """(item, fetch(item)) in the order the fetches end, `concurrency` of them at once.

    At most `concurrency` results are held at any time, fetched or being fetched:
    a fetch starts only once the caller has taken an earlier one, and a result is
    let go as soon as the caller has it. Hosts usually deliver faster than a thread
    converts, so otherwise a batch's downloads would pile up (a batch of 25 MiB
    files: 800 MB) and stay until the task ends.
    """
    if not items:
        return
    room = threading.Semaphore(concurrency)
    stopping = threading.Event()

    def held(item: T) -> R:
        room.acquire()
        if stopping.is_set():  # the caller is gone: nobody would take this one
            raise _Abandoned
        return fetch(item)

    pool = ThreadPoolExecutor(max_workers=min(concurrency, len(items)))
    try:
        started = {pool.submit(held, item): item for item in items}
        for done in as_completed(started):  # it lets go of each future it yields
            item = started.pop(done)
            yield item, done.result()
            room.release()
    finally:
        # The caller stopped early (or failed): fetches not started are dropped, and
        # threads waiting for room are let through to give theirs up; only fetches
        # already under way are waited for.
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        for _ in range(len(items)):
            room.release()
        pool.shutdown(wait=True)


class _Abandoned(Exception):
    """A fetch not started because the caller of `as_fetched` stopped taking results."""


def _slots(item: ImageItem) -> tuple[tuple[int, int], ...]:
    """Every (row, position) that takes this image's result: it and its repeats."""
    return ((item.row, item.position), *item.copies)


class CancelCheck:
    """Whether the request was cancelled, asked of storage at most every `interval` s.

    Shared by a batch's download threads: a cancel stops new downloads within
    about a second, at the cost of one existence check per second per batch.
    """

    def __init__(self, storage: Storage, request_id: str, interval: float = 1.0):
        self.storage = storage
        self.key = cancel_marker_key(request_id)
        self.interval = interval
        self._checked_at = -float("inf")
        self._cancelled = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._checked_at >= self.interval:
            self._checked_at = now
            # Storage trouble: keep going; the image's own write will report it.
            with contextlib.suppress(StorageError):
                self._cancelled = self.storage.exists(self.key)
        return self._cancelled


class Skipped:
    """A download not started because the request was cancelled."""


def _download(
    fetcher: Fetcher, url: str, cancelled: Callable[[], bool]
) -> bytes | FetchError | Skipped:
    if cancelled():
        return Skipped()
    try:
        return fetcher.fetch(url)
    except FetchError as exc:
        return exc


def _finish(
    spec: JobSpec, item: ImageItem, downloaded: bytes | FetchError | Skipped
) -> ImageResult | None:
    if isinstance(downloaded, Skipped):
        return None

    def failed(reason: str, bytes_in: int | None = None) -> ImageResult:
        return ImageResult(item.row, item.position, ok=False, error=reason, bytes_in=bytes_in)

    if isinstance(downloaded, FetchError):
        return failed(f"download failed: {downloaded.reason}")
    try:
        image = compress(
            downloaded,
            spec.options,
            max_pixels=spec.max_pixels,
            max_memory=spec.max_image_memory or None,
        )
    except ImageRejected as exc:
        return failed(exc.reason, len(downloaded))
    key = output_key(spec.request_id, item.row, item.position, spec.options.extension)
    try:
        put_with_retries(storage_for(spec.storage), key, image.data, spec.options.content_type)
    except StorageError as exc:
        return failed(f"storage write failed: {exc}", len(downloaded))
    return ImageResult(
        item.row,
        item.position,
        ok=True,
        output_key=key,
        bytes_in=len(downloaded),
        bytes_out=len(image.data),
        width=image.width,
        height=image.height,
    )


# Object stores fail now and then (a throttled or reset S3 connection); a short,
# bounded retry rides that out without letting a store that is down stall the batch.
WRITE_ATTEMPTS = 3
WRITE_BACKOFF = 0.2  # seconds before the second attempt, doubled for the next


def put_with_retries(
    storage: Storage,
    key: str,
    data: bytes,
    content_type: str | None = None,
    *,
    attempts: int = WRITE_ATTEMPTS,
    backoff: float = WRITE_BACKOFF,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """`storage.put`, tried `attempts` times; the last StorageError propagates."""
    for attempt in range(1, attempts + 1):
        try:
            storage.put(key, data, content_type)
            return
        except StorageError as exc:
            if attempt == attempts:
                raise
            log.warning("storage write of %s failed (attempt %d): %s", key, attempt, exc)
            sleep(backoff * 2 ** (attempt - 1))

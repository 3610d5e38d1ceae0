"""Batch runs without HTTP: what the CLI and the notebook call.

Same intake, same driver, same records as the API: a batch run is a request
like any other, visible in the status API if a server shares the records.
Products are named by `ImageRecord.file_line` (the line of the uploaded file,
the header being line 1), as the API and the page name them.
"""

from __future__ import annotations

import io
import itertools
import os
import posixpath
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from pipeline import outputs
from pipeline.clock import utc_now
from pipeline.csv_input import csv_limits
from pipeline.csv_output import failure_rows, output_csv_rows, render_csv
from pipeline.errors import FetchError, ImageRejected
from pipeline.fetch import Fetcher, fetch_config
from pipeline.intake import accept_csv, new_request_id
from pipeline.keys import output_key
from pipeline.models import ImageRecord, ImageStatus, RequestRecord
from pipeline.options import resolve_options
from pipeline.service import Services

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EXPORT_IMAGES = "images"  # the folder of an export holding the images
EXPORT_CSV = "output.csv"
EXPORT_FAILURES = "failures.csv"
EXPORT_THREADS = 8  # reads at once from storage: an object store answers in ~10-50 ms each


def run_csv(
    services: Services,
    csv: bytes | str | Path,
    *,
    format: str | None = None,  # shadows the builtin: the option's name everywhere else
    quality: int | None = None,
    max_width: int | None = None,
    max_height: int | None = None,
    progress: bool = True,
    poll: float = 0.25,
) -> RequestRecord:
    """Validate, submit and wait for one CSV, showing a progress bar. Returns the final record.

    The output options are the upload form's (README "Output options"); each left
    None takes the server's default. A bad one raises OptionError naming it,
    before anything is stored. `export` then copies the outputs into a folder.
    """
    given = {"format": format, "quality": quality, "max_width": max_width, "max_height": max_height}
    options = resolve_options(given, services.settings.option_defaults())
    data = csv if isinstance(csv, bytes) else Path(csv).read_bytes()
    name = "" if isinstance(csv, bytes) else Path(csv).name
    accepted = accept_csv(
        data,
        store=services.store,
        storage=services.storage,
        limits=csv_limits(services.settings),
        now=utc_now(),
        request_id=new_request_id(),
        source_name=name,
        options=options,
    )
    rid = accepted.request_id
    # Driven here unless another process sharing the records took it first; either
    # way the record says when it is final.
    services.driver.submit(rid)
    with tqdm(
        total=accepted.total_images, unit="img", desc=name or rid[:8], disable=not progress
    ) as bar:
        while True:
            driven_elsewhere = services.driver.wait(rid, timeout=poll)
            record = services.store.get_request(rid)
            assert record is not None
            bar.update(record.processed_images - bar.n)
            bar.set_postfix(
                status=str(record.status),  # pending, queued (waiting for room), processing...
                failed=record.failed_images,
                cancelled=record.cancelled_images,
                refresh=False,
            )
            if record.status.is_final:
                return record
            if driven_elsewhere:
                time.sleep(poll)


def results_frame(services: Services, request_id: str) -> pd.DataFrame:
    """One row per image, in input order; `line` names its product (the file's line)."""
    url = services.storage.url
    rows = [
        {
            "line": i.file_line,
            "s_no": i.serial,
            "product_name": i.product_name,
            "position": i.position + 1,
            "input_url": i.input_url,
            "status": str(i.status),
            "output_url": url(i.output_key) if i.output_key else None,
            "error": i.error,
            "bytes_in": i.bytes_in,
            "bytes_out": i.bytes_out,
            "width": i.width,
            "height": i.height,
        }
        for i in services.store.iter_images(request_id)
    ]
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["saved_pct"] = (100 * (1 - frame["bytes_out"] / frame["bytes_in"])).round(1)
    return frame


def failures(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.loc[
        frame["status"] == str(ImageStatus.FAILED),
        ["line", "s_no", "product_name", "input_url", "error"],
    ]


def failure_reasons(services: Services, request_id: str, *, limit: int = 10) -> pd.DataFrame:
    """The most common failure reasons (numbers and addresses set aside), with counts."""
    summary = services.store.failure_summary(request_id, limit=limit)
    return pd.DataFrame(
        [(r.reason, r.count, r.example) for r in summary], columns=["reason", "images", "example"]
    )


def write_output_csv(services: Services, request_id: str, path: str | Path) -> Path:
    """The output CSV, its links the stored images' URLs (`describe_outputs`
    says what serves them); `export` writes one that links to copies instead."""
    record = services.store.get_request(request_id)
    if record is None or record.output_key is None:
        raise FileNotFoundError(f"request {request_id} has no output CSV")
    # Written from the records, as the API's output route does when the stored copy
    # is missing: the records are the truth, and storage may have failed at the end.
    return _write_chunks(
        Path(path), outputs.csv_chunks(services.store, services.storage, request_id)
    )


def write_failures_csv(services: Services, request_id: str, path: str | Path) -> Path:
    """Every failed image with its product's line and its reason, as CSV."""
    failed = services.store.iter_images(request_id, status=ImageStatus.FAILED)
    return _write_chunks(Path(path), render_csv(failure_rows(failed)))


@dataclass(frozen=True)
class Export:
    """What `export` wrote: a folder that can be moved or zipped as a whole."""

    directory: Path
    output_csv: Path
    images: int  # image files (repeats of one URL share one)
    failures_csv: Path | None  # None when no image failed


def export(services: Services, request_id: str, directory: str | Path) -> Export:
    """Copy every output image of the request into `directory`/images/ and write
    `directory`/output.csv linking to them by relative paths (`images/0000003-000.webp`),
    plus `directory`/failures.csv when some images failed.

    The CSV has the output CSV's columns and rows; the images are read through the
    storage, local or remote. Files of an earlier export with the same names are
    replaced. Raises StorageError or OSError when an image cannot be read or written.
    """
    target = Path(directory)
    images = target / EXPORT_IMAGES
    images.mkdir(parents=True, exist_ok=True)
    storage = services.storage

    def copy(key: str) -> None:
        _write_chunks(images / posixpath.basename(key), [storage.get(key)])

    copied = 0
    keys = _stored_outputs(services.store.iter_images(request_id, status=ImageStatus.DONE))
    with ThreadPoolExecutor(EXPORT_THREADS, thread_name_prefix="export") as pool:
        # A chunk at a time: a 100k-image request never holds 100k futures.
        while chunk := list(itertools.islice(keys, 4 * EXPORT_THREADS)):
            for _ in pool.map(copy, chunk):
                copied += 1

    def relative(key: str) -> str:
        return f"{EXPORT_IMAGES}/{posixpath.basename(key)}"

    rows = output_csv_rows(services.store.iter_images(request_id), relative)
    bom = outputs.input_has_bom(storage, request_id)
    output_csv = _write_chunks(target / EXPORT_CSV, render_csv(rows, bom=bom))
    record = services.store.get_request(request_id)
    failures_csv = (
        write_failures_csv(services, request_id, target / EXPORT_FAILURES)
        if record is not None and record.failed_images
        else None
    )
    return Export(target, output_csv, copied, failures_csv)


def _stored_outputs(done: Iterable[ImageRecord]) -> Iterator[str]:
    """Each output key once: every slot of a repeated URL names its first slot's."""
    seen: set[str] = set()
    for image in done:
        if image.output_key and image.output_key not in seen:
            seen.add(image.output_key)
            yield image.output_key


def _write_chunks(path: Path, chunks: Iterable[bytes]) -> Path:
    """Whole or not at all: a run stopped midway leaves no truncated file under `path`."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def describe_outputs(services: Services, request_id: str) -> list[str]:
    """Where the request's images are stored and what serves the output CSV's links,
    for each kind of storage (README "Batch runs from the shell")."""
    storage, settings = services.storage, services.settings
    folder = posixpath.dirname(output_key(request_id, 0, 0))
    if storage.is_local:
        where = f"images: stored in {storage.path(folder)}/"
    else:
        where = f"images: stored at {storage.config.url.rstrip('/')}/{folder}/"
    if settings.output_url_mode == "presigned":
        until = utc_now() + timedelta(seconds=settings.presign_expires)
        links = (
            "links: presigned URLs of the bucket, valid until "
            f"{until:%Y-%m-%d %H:%M} UTC (PRESIGN_EXPIRES)"
        )
    elif settings.public_base_url:
        links = (
            f"links: {storage.url(folder)}/… (PUBLIC_BASE_URL): they open where that "
            "address serves the stored images"
        )
    elif storage.is_local and settings.api_keys:
        # A batch run's request belongs to no key, and with keys such a request is
        # nobody's (api/auth.py): /media answers 404 for its images.
        links = (
            f"links: {storage.url(folder)}/… point at the API's /media, which does not serve "
            "them while API_KEYS is set (a batch run belongs to no key): export the images "
            "(--output-dir) to open them"
        )
    elif storage.is_local:
        links = (
            f"links: {storage.url(folder)}/… are served by the API (`make run`) while it "
            "runs with the same DATA_DIR or STORAGE_URL"
        )
    else:
        links = (
            f"links: {storage.url(folder)}/…, the bucket's own URLs: they open when the "
            'bucket lets anyone read output images (README "Output URLs on S3")'
        )
    return [where, links]


def before_after(
    services: Services, request_id: str, *, limit: int = 4, size: int = 256
) -> list[Image.Image]:
    """Side-by-side thumbnails (input left, output right) of the first few done images."""
    fetcher = Fetcher(fetch_config(services.settings))
    pairs: list[Image.Image] = []
    for image in services.store.iter_images(request_id, status=ImageStatus.DONE):
        if len(pairs) >= limit:
            break
        if image.output_key is None:
            continue
        try:
            before = _thumbnail(fetcher.fetch(image.input_url), size)
        except (FetchError, ImageRejected, OSError):
            continue  # the source changed or went away since; show the next one
        after = _thumbnail(services.storage.get(image.output_key), size)
        pairs.append(_side_by_side(before, after))
    return pairs


def _thumbnail(data: bytes, size: int) -> Image.Image:
    with Image.open(io.BytesIO(data)) as source:
        im = ImageOps.exif_transpose(source).convert("RGBA")
        im.thumbnail((size, size))
        flat = Image.new("RGB", im.size, "white")
        flat.paste(im, mask=im.getchannel("A"))
        return flat


def _side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    gap = 8
    out = Image.new(
        "RGB", (left.width + gap + right.width, max(left.height, right.height)), "white"
    )
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


# Charts (matplotlib: the `notebook` extra). Fixed sizes and distributions, never a
# mark per image, so 10 images and 100,000 read alike.


def plot_sizes(frame: pd.DataFrame) -> Figure:
    """How much each image shrank (a histogram) and the totals before and after.

    Each stored output counts once: the slots of a repeated URL share one download
    and one output."""
    import matplotlib.pyplot as plt

    done = frame.loc[frame["status"] == str(ImageStatus.DONE)].drop_duplicates("output_url")
    fig, (spread, totals) = plt.subplots(
        1, 2, figsize=(11, 3.6), width_ratios=(2, 1), layout="constrained"
    )
    saved = done["saved_pct"].dropna()
    spread.hist(saved, bins=40, color="tab:blue")
    if len(saved):
        spread.axvline(saved.median(), color="black", linestyle="--", linewidth=1)
        spread.annotate(
            f"median {saved.median():.0f}%",
            (saved.median(), 1),
            xycoords=("data", "axes fraction"),
            xytext=(4, -12),
            textcoords="offset points",
        )
    spread.set(
        title=f"Bytes saved per image ({len(done):,} images)",
        xlabel="% of the input's bytes saved (negative: the output is larger)",
        ylabel="images",
    )
    before, after = done["bytes_in"].sum(), done["bytes_out"].sum()
    scale, unit = _byte_unit(max(before, after))
    bars = totals.bar(
        ["before", "after"], [before / scale, after / scale], color=["grey", "tab:blue"]
    )
    totals.bar_label(bars, fmt="%.1f")
    totals.margins(y=0.12)  # room for the labels under the title
    share = f", {100 * (1 - after / before):.0f}% saved" if before else ""
    totals.set(title=f"All images{share}", ylabel=unit)
    return fig


def plot_failure_reasons(reasons: pd.DataFrame, *, total: int | None = None) -> Figure | None:
    """The top failure reasons (`failure_reasons`) as horizontal bars; None when none failed."""
    import matplotlib.pyplot as plt

    if reasons.empty:
        return None
    from matplotlib.ticker import MaxNLocator

    # As tall as its bars (at most `failure_reasons`'s limit), whatever the image count.
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.35 * len(reasons)), layout="constrained")
    places = range(len(reasons))  # positions, not labels: two long reasons may shorten alike
    bars = ax.barh(places, reasons["images"], height=0.6, color="tab:red")
    ax.set_yticks(places, [_shorten(reason, 70) for reason in reasons["reason"]], fontsize=8)
    ax.invert_yaxis()  # the most common at the top
    ax.bar_label(bars, fmt="{:,.0f}", padding=2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    shown = int(reasons["images"].sum())
    of = f" ({shown:,} of {total:,} failed images)" if total and total > shown else ""
    ax.set(title=f"Failures by reason, most common first{of}", xlabel="images")
    return fig


def _byte_unit(largest: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if largest >= scale:
            return scale, unit
    return 1.0, "bytes"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"

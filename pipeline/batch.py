"""Batch runs without HTTP: what the CLI and the notebook call.

Same intake, same driver, same records as the API: a batch run is a request
like any other, visible in the status API if a server shares the records.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from pipeline import outputs
from pipeline.clock import utc_now
from pipeline.errors import FetchError, ImageRejected
from pipeline.fetch import Fetcher
from pipeline.intake import accept_csv, new_request_id
from pipeline.models import ImageStatus, RequestRecord
from pipeline.options import resolve_options
from pipeline.service import Services, csv_limits, fetch_config


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
    before anything is stored.
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
    """One row per image, in input order."""
    url = services.storage.url
    rows = [
        {
            "row": i.row + 1,
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
        frame["status"] == str(ImageStatus.FAILED), ["row", "s_no", "input_url", "error"]
    ]


def write_output_csv(services: Services, request_id: str, path: str | Path) -> Path:
    record = services.store.get_request(request_id)
    if record is None or record.output_key is None:
        raise FileNotFoundError(f"request {request_id} has no output CSV")
    target = Path(path)
    # Written from the records, as the API's output route does when the stored copy
    # is missing: the records are the truth, and storage may have failed at the end.
    with target.open("wb") as dst:
        for chunk in outputs.csv_chunks(services.store, services.storage, request_id):
            dst.write(chunk)
    return target


def before_after(
    services: Services, request_id: str, *, limit: int = 4, size: int = 256
) -> list[Image.Image]:
    """Side-by-side thumbnails (input left, output right) of the first few done images."""
    fetcher = Fetcher(fetch_config(services.settings))
    pairs = []
    for image in services.store.iter_images(request_id):
        if len(pairs) >= limit:
            break
        if image.status != ImageStatus.DONE or image.output_key is None:
            continue
        try:
            before = _thumbnail(fetcher.fetch(image.input_url), size)
        except (FetchError, ImageRejected, OSError):
            continue  # the source changed or went away since; show the next one
        after = _thumbnail(services.storage.get(image.output_key), size)
        pairs.append(_side_by_side(before, after))
    return pairs


def _thumbnail(data: bytes, size: int) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im).convert("RGBA")
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


def plot_bytes(frame: pd.DataFrame):
    """Bar chart of bytes before and after, per done image (needs matplotlib)."""
    done = frame.loc[frame["status"] == str(ImageStatus.DONE)]
    labels = done["row"].astype(str) + "." + done["position"].astype(str)
    data = done.assign(image=labels).set_index("image")[["bytes_in", "bytes_out"]]
    ax = data.plot.bar(figsize=(max(6, len(data) * 0.6), 4), rot=0)
    ax.set_title("Bytes per image, before and after (row.position)")
    ax.set_ylabel("bytes")
    return ax

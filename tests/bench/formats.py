"""The formats leg (issue 13): each output format at the server's default quality.

Every corpus image through `pipeline.transform.compress(data, OutputOptions(format,
quality))` for jpeg, webp and avif, at the server's default qualities (Settings'
defaults, calibrated by calibrate.py: what the service does with no quality
given) unless --webp-quality / --avif-quality say otherwise; one process per core.
For each format: bytes out (total, and relative to JPEG's), mean luma SSIM
against the source (quality.py), and CPU ms per image of the whole `compress`
(decode, convert, encode). No images/s: the SSIM, computed beside each image,
would dominate the wall time; the throughput leg has that.

Targets: WebP and AVIF at their defaults keep JPEG's mean SSIM (less 0.001) in
fewer bytes: what the calibration chose them for, on its 200 images; on this leg's
120 they can land a hair either side (WebP q56: 0.952525 against 0.952531), and a
new encoder version could move them further.
"""

from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from pipeline import transform
from pipeline.options import FORMATS, OutputOptions
from pipeline.settings import Settings
from tests.bench import quality

# Mean SSIM this far below JPEG's still counts as equal: a tenth of what one step of
# AVIF's quality moves it, and far below what the eye tells apart.
SSIM_TOLERANCE = 0.001

_images: list[bytes] = []  # each worker process's copy of the corpus


def _load(images: list[bytes]) -> None:
    global _images
    _images = images


def _measure(task: tuple[int, str, int]) -> tuple[int, float, float]:
    """(bytes out, CPU seconds of compress, luma SSIM) of one image in one format."""
    index, fmt, q = task
    data = _images[index]
    start = time.process_time()
    out = transform.compress(data, OutputOptions(format=fmt, quality=q))
    cpu = time.process_time() - start
    return len(out.data), cpu, quality.ssim(quality.luma(quality.decode(data)), out.data)


def qualities(args) -> dict[str, int]:
    defaults = Settings.from_env({}).option_defaults()
    chosen = {fmt: defaults.quality_for(fmt) for fmt in FORMATS}
    for fmt in FORMATS:
        if given := getattr(args, f"{fmt}_quality", None):
            chosen[fmt] = given
    return chosen


def run(args, images) -> dict:
    data = [im.data for im in images]
    rows: list[dict[str, Any]] = []
    processes = os.cpu_count() or 1
    with ProcessPoolExecutor(processes, initializer=_load, initargs=(data,)) as pool:
        # Load every codec in every process before anything is timed.
        list(pool.map(_measure, [(0, fmt, 50) for fmt in FORMATS] * processes))
        for fmt, q in qualities(args).items():
            start = time.perf_counter()
            results = list(pool.map(_measure, [(i, fmt, q) for i in range(len(data))]))
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "format": fmt,
                    "quality": q,
                    "bytes": sum(r[0] for r in results),
                    "mean_ssim": round(statistics.fmean(r[2] for r in results), 6),
                    "cpu_ms_per_image": round(1000 * statistics.fmean(r[1] for r in results), 1),
                }
            )
            print(f"  formats {fmt} q{q}: done in {seconds:.1f} s", flush=True)
    jpeg = next(r for r in rows if r["format"] == "jpeg")
    for r in rows:
        r["bytes_vs_jpeg"] = round(r["bytes"] / jpeg["bytes"], 4)
        r["cpu_vs_jpeg"] = round(r["cpu_ms_per_image"] / jpeg["cpu_ms_per_image"], 1)
    return {
        "images": len(data),
        "megapixels": round(sum(im.megapixels for im in images), 1),
        "source_bytes": sum(len(d) for d in data),
        "avif_speed": getattr(transform, "AVIF_SPEED", None),
        "processes": processes,
        "formats": rows,
    }


def verdicts(result: dict) -> list[tuple[str, bool | None, str]]:
    rows = {r["format"]: r for r in result["formats"]}
    jpeg = rows["jpeg"]
    out: list[tuple[str, bool | None, str]] = []
    for fmt in ("webp", "avif"):
        r = rows[fmt]
        out.append(
            (
                f"{fmt} q{r['quality']}: JPEG q{jpeg['quality']}'s mean SSIM "
                f"(-{SSIM_TOLERANCE}) in fewer bytes",
                r["mean_ssim"] >= jpeg["mean_ssim"] - SSIM_TOLERANCE and r["bytes"] < jpeg["bytes"],
                f"SSIM {r['mean_ssim']} vs {jpeg['mean_ssim']}, "
                f"{r['bytes_vs_jpeg']:.1%} of JPEG's bytes",
            )
        )
    return out


def print_table(result: dict) -> None:
    print(f"\nformats, {result['images']} images ({result['megapixels']} MP)")
    columns = [
        "format",
        "quality",
        "bytes",
        "bytes_vs_jpeg",
        "mean_ssim",
        "cpu_ms_per_image",
        "cpu_vs_jpeg",
    ]
    print(" | ".join(columns))
    for r in result["formats"]:
        print(" | ".join(str(r[c]) for c in columns))

"""Calibrate the WebP and AVIF default qualities against JPEG q50 (issue 13).

    python -m tests.bench.calibrate                      200 images, AVIF speeds 6,7,8 (~35 min)
    python -m tests.bench.calibrate --images 40 --speeds 8     a quick look (~2 min)

Over the bench corpus (corpus.py, 0.25-4 MP photographic mosaics), mean luma
SSIM against the source (quality.py) of JPEG at the pipeline's settings sets
the target; for WebP (method 4) and AVIF at each speed, the smallest integer
quality whose mean SSIM is at or above it is found by bisection (mean SSIM
rises with quality; each probe is one pass over the corpus). Prints the table
(format, quality, mean SSIM, bytes relative to JPEG, encode CPU ms per image)
and writes it with every probe to bench-results/calibration-*.json.

Not a `make bench` leg: it takes minutes and its answer only changes with the
encoders (Pillow, libwebp, libavif/aom) or the corpus. Its outcome is the
defaults in pipeline/settings.py; the formats leg then checks them every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from PIL import features

from tests.bench import corpus, quality

ROOT = Path(__file__).resolve().parents[2]

_images: list[bytes] = []  # each worker process's copy of the corpus


def _load(folder: str, count: int) -> None:
    global _images
    _images = [im.data for im in corpus.load_or_build(Path(folder), count)]


def _probe(task: tuple[int, list[tuple[str, int, int | None]]]) -> list[tuple[int, float, float]]:
    """One image under several settings: (bytes, encode CPU s, luma SSIM) for each."""
    index, settings = task
    im = quality.decode(_images[index])
    reference = quality.luma(im)
    out = []
    for fmt, q, speed in settings:
        data, cpu = quality.timed_encode(im, fmt, q, speed)
        out.append((len(data), cpu, quality.ssim(reference, data)))
    return out


class Calibration:
    def __init__(self, pool: ProcessPoolExecutor, count: int):
        self.pool, self.count = pool, count
        self.points: dict[tuple[str, int, int | None], dict] = {}

    def measure(self, fmt: str, q: int, speed: int | None = None) -> dict:
        key = (fmt, q, speed)
        if key not in self.points:
            tasks = [(i, [key]) for i in range(self.count)]
            rows = [r[0] for r in self.pool.map(_probe, tasks, chunksize=2)]
            point = {
                "format": fmt,
                "quality": q,
                "speed": speed,
                "images": len(rows),
                "bytes": sum(r[0] for r in rows),
                "cpu_ms_per_image": 1000 * statistics.fmean(r[1] for r in rows),
                "mean_ssim": statistics.fmean(r[2] for r in rows),
            }
            self.points[key] = point
            print(_line(point), flush=True)
        return self.points[key]

    def match(self, fmt: str, target: float, low: int, high: int, speed: int | None = None):
        """The smallest quality in low..high whose mean SSIM >= target, and the one below."""
        mean: Callable[[int], float] = lambda q: self.measure(fmt, q, speed)["mean_ssim"]  # noqa: E731
        while mean(low) >= target and low > 1:
            low = max(1, low - 20)
        while mean(high) < target:
            if high == 100:
                raise RuntimeError(f"{fmt} cannot reach SSIM {target:.4f}")
            high = min(100, high + 20)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if mean(mid) >= target else (mid, high)
        return self.points[(fmt, high, speed)], self.points.get((fmt, low, speed))


def _line(p: dict) -> str:
    speed = "" if p["speed"] is None else f" speed {p['speed']}"
    return (
        f"  probe {p['format']} q{p['quality']}{speed}: SSIM {p['mean_ssim']:.5f}, "
        f"{p['bytes'] / 1e6:.2f} MB, {p['cpu_ms_per_image']:.1f} ms CPU/image"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.calibrate")
    parser.add_argument("--images", type=int, default=200, help="corpus images")
    parser.add_argument("--jpeg-quality", type=int, default=50)
    parser.add_argument("--speeds", default="6,7,8", help="AVIF encoder speeds to compare")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    # Its own folder: the throughput leg's image host serves every file in corpus/.
    folder = args.out / f"corpus-{args.images}"
    corpus.load_or_build(folder, args.images)
    with ProcessPoolExecutor(
        args.processes, initializer=_load, initargs=(str(folder), args.images)
    ) as pool:
        cal = Calibration(pool, args.images)
        jpeg = cal.measure("jpeg", args.jpeg_quality)
        target = jpeg["mean_ssim"]
        chosen = [(jpeg, None)]
        chosen.append(cal.match("webp", target, 40, 70))
        for speed in (int(s) for s in args.speeds.split(",")):
            chosen.append(cal.match("avif", target, 30, 70, speed))

    rows = []
    for point, below in chosen:
        row = dict(point, bytes_vs_jpeg=point["bytes"] / jpeg["bytes"])
        row["cpu_vs_jpeg"] = point["cpu_ms_per_image"] / jpeg["cpu_ms_per_image"]
        row["quality_below"] = None if below is None else below["quality"]
        row["mean_ssim_below"] = None if below is None else below["mean_ssim"]
        rows.append(row)
    print_table(rows, target)
    report = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {
            lib: features.version(lib) for lib in ("pil", "jpg", "webp", "avif", "littlecms2")
        },
        "settings": {k: str(v) for k, v in vars(args).items()},
        "target_ssim": target,
        "chosen": rows,
        "probes": list(cal.points.values()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"calibration-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwritten {path}")


def print_table(rows: list[dict], target: float) -> None:
    print(f"\ntarget: mean luma SSIM of JPEG, {target:.5f}")
    print("format | quality | speed | mean SSIM | bytes vs JPEG | encode CPU ms/image | vs JPEG")
    for r in rows:
        print(
            f"{r['format']} | {r['quality']} | {r['speed'] or '-'} | {r['mean_ssim']:.5f} | "
            f"{r['bytes_vs_jpeg']:.1%} | {r['cpu_ms_per_image']:.1f} | {r['cpu_vs_jpeg']:.0f}x"
        )


if __name__ == "__main__":
    main()

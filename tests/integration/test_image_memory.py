"""Memory per image, measured: the README's per-image figure holds for the worst images.

Each measurement runs in a fresh process set up as a Dask worker is
(`tune_allocator`, codecs loaded), reads its images, resets the kernel's
high-water mark of resident memory, compresses them (several at once on threads,
as a worker's threads do), and reports how far the high-water mark rose.
"""

from __future__ import annotations

import io
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline.image_plan import default_memory_budget
from pipeline.settings import Settings
from tests import imagefactory as images

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(platform.system() != "Linux", reason="reads /proc/self/status"),
]

ROOT = Path(__file__).resolve().parents[2]
# What the README documents per image at the default settings: 650 MB.
PER_IMAGE = default_memory_budget(Settings().max_pixels)
SIDE = 7070  # 7070 x 7070 = 49,984,900 pixels: just under the default MAX_PIXELS

PROBE = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from pipeline.errors import ImageRejected
from pipeline.transform import compress
from pipeline.worker_memory import tune_allocator
from tests.imagefactory import tiny_images

tune_allocator()  # as every worker does before its first task
for sample in tiny_images().values():  # load every codec before measuring
    compress(sample)

def resident(key):
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith(key + ":"))

def outcome(data):
    try:
        result = compress(data)
    except ImageRejected as exc:
        return exc.reason
    return f"ok {result.width}x{result.height}"

inputs = [open(path, "rb").read() for path in sys.argv[1:]]
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # reset the high-water mark (VmHWM) to the current resident size
before = resident("VmRSS")
with ThreadPoolExecutor(len(inputs)) as pool:
    outcomes = list(pool.map(outcome, inputs))
print(json.dumps({"peak": resident("VmHWM") - before, "outcomes": outcomes}))
"""


def measure(*paths: Path) -> tuple[int, list[str]]:
    """Compress the files at once in a fresh process: (peak memory added, outcome of each)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(done.stdout)
    return report["peak"], report["outcomes"]


@pytest.fixture(scope="module")
def worst(tmp_path_factory) -> dict[str, Path]:
    """The heaviest images the default settings accept, and two they refuse."""
    folder = tmp_path_factory.mktemp("big-images")
    cmyk = io.BytesIO()
    # Baseline CMYK through an ICC profile: the decoded CMYK and the RGB it becomes
    # are both image-sized, then the encoder's coefficients.
    Image.new("CMYK", (SIDE, SIDE), (200, 40, 0, 10)).save(
        cmyk, "JPEG", quality=90, icc_profile=images.cmyk_icc_profile()
    )
    files = {
        # The case: 212 KB on disk, 638 MB at its peak before.
        "rgba_png": images.png_stripes(SIDE, SIDE),
        "cmyk_jpeg": cmyk.getvalue(),
        # Rotating it by EXIF takes one more image-sized copy: 800 MB estimated.
        "rotated_rgba_png": images.png_stripes(
            SIDE, SIDE, before_pixels=images.exif_orientation_chunk(6)
        ),
        # Decoded in full before, then refused by the JPEG encoder.
        "wide_png": images.png_wide(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


@pytest.mark.parametrize("name", ["rgba_png", "cmyk_jpeg"])
def test_worst_accepted_image_stays_under_the_per_image_figure(worst, name):
    peak, [outcome] = measure(worst[name])

    assert outcome == f"ok {SIDE}x{SIDE}"
    assert peak <= PER_IMAGE, f"{peak / 1e6:.0f} MB"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (
            "wide_png",
            "image is 49900000x1: a JPEG can be at most 65500 pixels on a side; "
            "set max_width and max_height to fit it",
        ),
        (
            "rotated_rgba_png",
            "image is 7070x7070 RGBA PNG to be rotated: converting it needs about 800 MB, "
            "over the limit of 650 MB per image",
        ),
    ],
)
def test_refused_from_the_header_without_decoding(worst, name, reason):
    peak, [outcome] = measure(worst[name])

    assert outcome == reason
    # Decoding either would take 200 MB or more; refusing takes next to nothing.
    assert peak < 20_000_000, f"{peak / 1e6:.0f} MB"


def test_two_threads_stay_under_twice_the_per_image_figure(worst):
    # A worker's memory is its baseline plus, per thread, one image at a time.
    peak, outcomes = measure(worst["rgba_png"], worst["cmyk_jpeg"])

    assert outcomes == [f"ok {SIDE}x{SIDE}"] * 2
    assert peak <= 2 * PER_IMAGE, f"{peak / 1e6:.0f} MB"

"""What an encoding costs and keeps: bytes, encode CPU, and luma SSIM against the source.

Shared by the calibration (calibrate.py) and the formats leg (formats.py), so
both judge an encoding the same way: SSIM (scikit-image, its default 7x7
window) on the luma plane only, BT.601 weights in floating point, data range
255, between the decoded source and the decoded output at the same size.
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

# BT.601 luma, as JPEG's own YCbCr (and Pillow's convert("YCbCr")) use.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def decode(data: bytes) -> Image.Image:
    """The source as the pipeline sees it for the corpus: RGB or L, fully decoded."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.copy() if im.mode in ("RGB", "L") else im.convert("RGB")


def luma(im: Image.Image) -> np.ndarray:
    """The Y plane as float32 (an L image is its own luma)."""
    pixels = np.asarray(im, dtype=np.float32)
    return pixels if pixels.ndim == 2 else pixels[..., :3] @ _LUMA


def ssim(reference: np.ndarray, data: bytes) -> float:
    """Luma SSIM of the encoded `data` against the source's luma `reference`."""
    from skimage.metrics import structural_similarity  # the `bench` extra

    with Image.open(io.BytesIO(data)) as out:
        y = luma(out)
    if y.shape != reference.shape:
        raise ValueError(f"output is {y.shape}, the source {reference.shape}: not comparable")
    return float(structural_similarity(reference, y, data_range=255.0))


def encode(im: Image.Image, fmt: str, quality: int, speed: int | None = None) -> bytes:
    """`im` encoded as the pipeline encodes each format (pipeline/transform.py)."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        im.save(buf, "JPEG", quality=quality, optimize=True, progressive=False, subsampling="4:2:0")
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=quality, method=4)
    elif fmt == "avif":
        # Pillow's subsampling: 4:2:0, or 4:0:0 for grey. One thread, as the
        # pipeline runs it (Dask already keeps every core busy).
        im.save(buf, "AVIF", quality=quality, speed=speed, max_threads=1)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buf.getvalue()


def timed_encode(im: Image.Image, fmt: str, quality: int, speed: int | None = None):
    """(bytes, CPU seconds of this process, all its threads: AVIF encodes on several)."""
    start = time.process_time()
    data = encode(im, fmt, quality, speed)
    return data, time.process_time() - start

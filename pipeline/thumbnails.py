"""A small thumbnail of an output image: bytes in, JPEG bytes out.

Pure, like the transform: no storage, no records; the API's thumbnail route
(api/thumbnails.py) reads the output, calls `make_thumbnail` and caches the
result. It is the only Pillow code the API runs, and the API imports this
module only when it makes a thumbnail.

Memory: a JPEG output is decoded at a reduced scale (Pillow's `draft`, 1/2 to
1/8); WebP and AVIF have no such thing and are decoded whole, so an output
whose decoded pixels would exceed `max_pixels` (`MAX_SOURCE_PIXELS` unless
told) gets no thumbnail.
"""

from __future__ import annotations

import io
from typing import IO

from PIL import Image

from pipeline.errors import NoThumbnail

BOX = (160, 160)
QUALITY = 70
# 64 MB decoded as RGBA: far above a product photo, far below what would strain the API.
MAX_SOURCE_PIXELS = 16_000_000
SOURCE_FORMATS = ("JPEG", "WEBP", "AVIF")  # what the pipeline writes; nothing else is opened


def make_thumbnail(
    source: IO[bytes],
    *,
    box: tuple[int, int] = BOX,
    quality: int = QUALITY,
    max_pixels: int | None = None,
) -> bytes:
    """The image in `source` fitted inside `box` (never enlarged), as JPEG bytes.

    NoThumbnail when it is not a JPEG, WebP or AVIF image, or would decode to more
    than `max_pixels` pixels (judged from its header, before decoding)."""
    limit = MAX_SOURCE_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(source, formats=SOURCE_FORMATS) as im:
            # Twice the box, so the final resampling still has pixels to average.
            im.draft(None, (box[0] * 2, box[1] * 2))  # JPEG only; others ignore it
            width, height = im.size
            if width * height > limit:
                raise NoThumbnail(
                    f"the output decodes to {width}x{height} pixels, over the "
                    f"{limit:,}-pixel limit for thumbnails"
                )
            im.thumbnail(box, Image.Resampling.LANCZOS)
            out = _without_alpha(im)
            icc = im.info.get("icc_profile") if out.mode == im.mode else None
            buffer = io.BytesIO()
            out.save(buffer, "JPEG", quality=quality, optimize=True, icc_profile=icc)
            return buffer.getvalue()
    except Image.DecompressionBombError as exc:  # past Pillow's own limit (MAX_PIXELS raised)
        raise NoThumbnail(f"the output is too large to decode ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise NoThumbnail(f"the output is not a readable image ({exc})") from exc


def _without_alpha(im: Image.Image) -> Image.Image:
    if im.mode in ("RGB", "L"):
        return im
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", im.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return im.convert("RGB")

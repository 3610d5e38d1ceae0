"""The pure image transform: downloaded bytes in, a compressed JPEG and its metadata out.

No I/O and no shared state: `compress` reads only its arguments and returns a new
value, so Dask can run it in any thread. Every way the bytes can be unusable ends
in `ImageRejected(reason)`, which the task records as that image's failure.

Pillow reports a few oddities with `warnings.warn` (an image over its own
decompression-bomb threshold, corrupt EXIF). We do not silence them here:
`warnings.catch_warnings` swaps process-wide state and is not thread-safe before
Python 3.14. Where a filter turns them into errors (as the test suite does) they
become an `ImageRejected` like any other decoding failure; otherwise Python logs
them once and our own pixel limit, checked before decoding, still applies.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import cast

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from pipeline.errors import ImageRejected

SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_DEPTH_GREY = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
# The ICC colour-space signature (header bytes 16-20) that fits each output mode.
_ICC_SPACE = {"RGB": b"RGB ", "L": b"GRAY"}
_SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF8": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


@dataclass(frozen=True, slots=True)
class Compressed:
    data: bytes
    width: int
    height: int
    source_format: str
    source_mode: str


def compress(data: bytes, *, quality: int = 50, max_pixels: int = 50_000_000) -> Compressed:
    """Decode `data` (format sniffed, never trusted), make it upright, RGB or L, and JPEG it.

    Metadata is dropped (EXIF and so GPS, XMP, comments); only an ICC profile that
    still describes the output pixels is kept. Raises `ImageRejected` for bytes that
    are not a complete, supported image of at most `max_pixels` pixels.
    """
    # Bad settings are the caller's bug, not the image's: don't record them per image.
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality must be 1..95, got {quality}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    source_format = _sniff(data) or "image"  # for the reason, if even the header is bad
    try:
        with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as im:
            source_format, source_mode = im.format or "image", im.mode
            width, height = im.size
            # Only the header has been read so far, so a bomb costs nothing yet.
            if width * height > max_pixels:
                raise ImageRejected(
                    f"image is {width}x{height} = {width * height} pixels, "
                    f"over the limit of {max_pixels}"
                )
            im.load()  # decode everything now: truncated data fails here, not later
            ImageOps.exif_transpose(im, in_place=True)  # `im` is ours; the input is untouched
            out, icc = _to_jpeg_mode(im)
            return Compressed(
                data=_encode(out, quality, icc),
                width=out.width,
                height=out.height,
                source_format=source_format,
                source_mode=source_mode,
            )
    except ImageRejected:
        raise
    except UnidentifiedImageError as exc:
        raise ImageRejected(f"not a supported image ({_describe(data)})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"image is too large to decode safely: {exc}") from exc
    except MemoryError:
        raise  # the worker is short of memory, not the image at fault: let the task retry
    except Exception as exc:
        # Pillow raises many types for bad data (OSError, SyntaxError, ValueError,
        # EOFError, struct.error, zlib.error...); they all mean "cannot use these bytes".
        detail = str(exc) or type(exc).__name__
        if isinstance(exc, EOFError) or "truncated" in detail.lower() or _cut_short_riff(data):
            raise ImageRejected(f"truncated {source_format} data: {detail}") from exc
        raise ImageRejected(f"cannot decode {source_format} data: {detail}") from exc


def _to_jpeg_mode(im: Image.Image) -> tuple[Image.Image, bytes | None]:
    """Convert to RGB or L for JPEG; return the ICC profile to embed, if any."""
    icc = im.info.get("icc_profile") or None
    mode = im.mode
    if mode == "CMYK":
        # Converted through the source profile, the pixels are sRGB. We embed no
        # profile: untagged JPEGs are read as sRGB by browsers, and leaving it out
        # saves a few hundred bytes per image.
        return _cmyk_to_rgb(im, icc), None
    if mode in _ALPHA_MODES or "transparency" in im.info:
        out = _flatten_on_white(im)
    elif mode in ("RGB", "L"):
        out = im
    elif mode == "1":
        out = im.convert("L")
    elif mode in _HIGH_DEPTH_GREY:
        out = _grey_to_8bit(im)
    else:  # P without transparency, YCbCr, HSV...
        out = im.convert("RGB")
    # Flattening and palette expansion don't change the colour space, so an RGB
    # or grey profile still describes `out` when its space matches the output mode.
    keep = icc is not None and len(icc) >= 128 and icc[16:20] == _ICC_SPACE[out.mode]
    return out, icc if keep else None


def _flatten_on_white(im: Image.Image) -> Image.Image:
    # convert("RGBA") also turns tRNS / palette transparency into real alpha.
    rgba = im.convert("RGBA")
    out = Image.new("RGB", im.size, (255, 255, 255))
    # Pasting through the alpha mask onto an opaque background is "over" compositing.
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out.convert("L") if im.mode in ("L", "LA", "La") else out


def _grey_to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16/32-bit or float grey into 0..255; a plain convert("L") would clip."""
    if im.mode.startswith("I;16"):
        im = im if im.mode == "I;16" else im.convert("I")  # point() can't do I;16B etc.
        low, high = 0.0, 65535.0
    else:
        low, high = cast("tuple[float, float]", im.getextrema())  # one band: (min, max)
        # Use the conventional range when the data fits it (16-bit samples in a
        # 32-bit "I", floats in 0..1), so a dark image stays dark; else stretch.
        nominal = (0.0, 1.0) if im.mode == "F" else (0.0, 65535.0)
        if nominal[0] <= low and high <= nominal[1]:
            low, high = nominal
    scale = 255 / (high - low) if high > low else 0.0
    # point() only applies linear maps to these modes; the +0.5 rounds to nearest.
    return im.point(lambda v: v * scale + (0.5 - low * scale)).convert("L")


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    if icc is not None and icc[16:20] == b"CMYK":
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            # Built per call: LittleCMS profile handles are not safe to share
            # between threads, and creating sRGB takes microseconds.
            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            return ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")  # type: ignore[return-value]
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # an unusable profile should not cost the image; use Pillow's formula
    return im.convert("RGB")


def _encode(im: Image.Image, quality: int, icc: bytes | None) -> bytes:
    buf = io.BytesIO()
    im.save(
        buf,
        "JPEG",
        quality=quality,
        # Optimal Huffman tables: lossless, and on our photo-like test images at q50
        # 20-25% smaller for about 1.5x the encode time (2000x1500: 12 ms vs 7 ms).
        optimize=True,
        # Baseline: progressive was no smaller than optimized baseline there, took
        # twice as long to encode, and costs clients more memory to decode.
        progressive=False,
        # 4:2:0 is what every encoder uses at this quality: the eye barely sees
        # chroma resolution, and it halves the colour data.
        subsampling="4:2:0",
        icc_profile=icc,
        exif=b"",
        comment=b"",  # Pillow would otherwise copy a source JPEG's comment
    )
    return buf.getvalue()


def _sniff(data: bytes) -> str | None:
    """The supported format these bytes claim to be, judged by their first bytes."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for sig, fmt in _SIGNATURES.items() if data.startswith(sig)), None)


def _cut_short_riff(data: bytes) -> bool:
    # libwebp says only "could not create decoder object" for a cut-off file, but
    # RIFF records its own length, so we can tell.
    return data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") + 8 > len(data)


def _describe(data: bytes) -> str:
    """A short guess at what the bytes are, for the rejection reason."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "looks like an HTML page"
    if head.startswith((b"<?xml", b"<svg")):
        return "looks like XML or SVG"
    if fmt := _sniff(data):
        return f"{fmt} signature but an unreadable header"
    expected = ", ".join(SUPPORTED_FORMATS)
    return f"starts with {data[:8].hex(' ')}; expected {expected}"

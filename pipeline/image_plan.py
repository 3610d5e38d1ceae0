"""What the transform will do with one image, and what that costs, judged from its header.

Pure functions on values: `transform.compress` reads a `Header` from the image's
first bytes (no pixels decoded yet), asks `refusal()` whether to go on, and follows
the `Route` chosen here. Keeping the route and its cost in one place keeps the
memory estimate honest: it counts exactly the copies the transform makes.

The estimate is the sum of every image-sized buffer the transform allocates, as if
none were freed before the end: the decoded image, the decoder's own scratch, each
intermediate copy, the EXIF rotation, the encoder's buffers. Freed buffers do come
back, but a worker's allocator keeps many of them (`worker_memory`: buffers up to
32 MiB are reused, not returned), so the resident peak stays near that sum: 60-90%
of it for the 50-megapixel images measured (README "The memory a worker needs").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

# Bytes Pillow stores per pixel: three-band modes (RGB, YCbCr...) are padded to
# four, LA and PA too; unlisted modes take four.
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}

# The largest side each output format can hold. JPEG's is 65,535, but Pillow
# refuses sides over 65,500 ("broken data stream" after the whole decode).
# AVIF's depends on the AV1 encoder; AV1's top level (6.x) frames are at most
# 16,384 wide and 8,704 high, so either way round 8,704 fits every encoder.
OUTPUT_SIDE_LIMITS = {"JPEG": 65_500, "WEBP": 16_383, "AVIF": 8_704}

# JPEG frame types libjpeg decodes one row band at a time when every component is
# in the first scan: baseline, extended and arithmetic sequential. The others
# (progressive, lossless, hierarchical) hold the whole image's coefficients.
_SEQUENTIAL_FRAMES = frozenset({0xC0, 0xC1, 0xC9})
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG, DAC are not frames

# The default per-image budget, in bytes per pixel of MAX_PIXELS: what an 8-bit
# RGBA PNG or a baseline CMYK JPEG needs (the heaviest common images), so those
# are accepted up to MAX_PIXELS. Heavier routes (WebP input, progressive CMYK,
# EXIF-rotated progressive JPEGs) are accepted up to proportionally fewer pixels.
BUDGET_BYTES_PER_PIXEL = 13

RouteName = Literal[
    "as is",
    "flatten RGBA",
    "flatten LA",
    "flatten palette",
    "flatten via RGBA",
    "CMYK to RGB",
    "bilevel to grey",
    "16-bit grey to 8",
    "wide grey to 8",
    "to RGB",
]


@dataclass(frozen=True, slots=True)
class Header:
    """What is known of an image before its pixels are decoded."""

    format: str  # the source format, e.g. "PNG"
    mode: str  # the Pillow mode the decoder produces
    width: int
    height: int
    input_bytes: int
    transparency: bool = False  # a tRNS colour or palette alpha (alpha bands are in `mode`)
    palette_rgb: bool = False  # mode P with an RGB palette, flattened in the palette itself
    orientation: int = 1  # EXIF orientation; 1 when there is none or it is not known yet
    # JPEG: each component's (horizontal, vertical) sampling factors, and whether the
    # decoder holds every DCT coefficient (progressive, or one component per scan).
    jpeg_sampling: tuple[tuple[int, int], ...] = ()
    jpeg_all_coefficients: bool = False
    # TIFF: bits per pixel of the buffer a strip or tile is decoded into; one strip
    # may hold the whole image.
    stored_bits_per_pixel: int = 0
    run_length: bool = False  # BMP RLE: Pillow expands it in Python buffers first

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True, slots=True)
class Route:
    """How the decoded image becomes what the encoder takes."""

    name: RouteName
    copies: tuple[str, ...]  # modes of the image-sized intermediates it allocates
    output_mode: str  # "RGB" or "L"


def route(header: Header) -> Route:
    mode = header.mode
    if mode == "CMYK":
        return Route("CMYK to RGB", ("RGB",), "RGB")
    if mode == "RGBA" and not header.transparency:
        return Route("flatten RGBA", ("RGB",), "RGB")
    if mode == "LA" and not header.transparency:
        # Pasting LA onto L converts it to L first: two one-byte copies.
        return Route("flatten LA", ("L", "L"), "L")
    if mode == "P" and header.transparency and header.palette_rgb:
        return Route("flatten palette", ("RGB",), "RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or header.transparency:
        grey = mode in ("L", "LA", "La")
        copies = ("RGBA", "RGB", "L") if grey else ("RGBA", "RGB")
        return Route("flatten via RGBA", copies, "L" if grey else "RGB")
    if mode in ("RGB", "L"):
        return Route("as is", (), mode)
    if mode == "1":
        return Route("bilevel to grey", ("L",), "L")
    if mode == "I;16":
        return Route("16-bit grey to 8", ("I;16", "L"), "L")
    if mode in ("I;16L", "I;16B", "I;16N"):
        return Route("16-bit grey to 8", ("I", "I", "L"), "L")
    if mode in ("I", "F"):
        return Route("wide grey to 8", (mode, "L"), "L")
    return Route("to RGB", ("RGB",), "RGB")  # P without transparency, YCbCr, LAB, HSV...


def peak_bytes(
    header: Header, output_format: str = "JPEG", output_size: tuple[int, int] | None = None
) -> int:
    """The estimated peak memory of decoding, converting, resizing and encoding this image.

    `output_size` is the upright output's size (default: the image's own).
    """
    the_route = route(header)
    pixels = header.pixels
    out_w, out_h = output_size or _upright(header)
    out_pixels = out_w * out_h
    mode = the_route.output_mode
    resized = out_pixels != pixels  # a copy at the output's size
    turned = header.orientation in range(2, 9)  # and one turned
    return (
        pixels * sum(pixel_bytes(m) for m in (header.mode, *the_route.copies))
        + out_pixels * pixel_bytes(mode) * (resized + turned)
        + _decoder_scratch(header)
        + _encoder_bytes(output_format, mode, out_w, out_h)
    )


def refusal(
    header: Header,
    *,
    max_pixels: int,
    max_memory: int,
    output_format: str = "JPEG",
    output_size: tuple[int, int] | None = None,
) -> str | None:
    """Why this image must not be decoded, or None: every check needs only the header.

    `output_size` is the upright output's size when the image is resized.
    """
    w, h = header.width, header.height
    if header.pixels > max_pixels:
        return f"image is {w}x{h} = {header.pixels} pixels, over the limit of {max_pixels}"
    side_limit = OUTPUT_SIDE_LIMITS[output_format]
    out_w, out_h = output_size or (w, h)
    if max(out_w, out_h) > side_limit:
        resized = f" (fitted: {out_w}x{out_h})" if (out_w, out_h) not in ((w, h), (h, w)) else ""
        return (
            f"image is {w}x{h}{resized}: a {output_format} can be at most {side_limit} "
            "pixels on a side; set max_width and max_height to fit it"
        )
    needed = peak_bytes(header, output_format, output_size)
    if needed > max_memory:
        return (
            f"image is {w}x{h} {_kind(header)}: converting it needs about {_mb(needed)} MB, "
            f"over the limit of {_mb(max_memory)} MB per image"
        )
    return None


def _upright(header: Header) -> tuple[int, int]:
    if header.orientation in (5, 6, 7, 8):
        return header.height, header.width
    return header.width, header.height


def default_memory_budget(max_pixels: int) -> int:
    return BUDGET_BYTES_PER_PIXEL * max_pixels


def pixel_bytes(mode: str) -> int:
    return _PIXEL_BYTES.get(mode, 4)


def jpeg_holds_all_coefficients(data: bytes) -> bool:
    """Whether libjpeg must hold every coefficient of the image while decoding it.

    True for a progressive (or lossless, hierarchical) frame, and for a sequential
    one whose first scan lacks a component (non-interleaved), as libjpeg decides;
    Pillow's header has neither fact. Unreadable segments count as the costly case.
    """
    components, pos = 0, 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return True
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            pos += 2
            continue
        if marker in _FRAMES:
            if marker not in _SEQUENTIAL_FRAMES or pos + 10 > len(data):
                return True
            components = data[pos + 9]
        elif marker == 0xDA:  # start of scan: how many components it holds
            if components == 0 or pos + 4 >= len(data):
                return True
            return data[pos + 4] < components
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return True


def _decoder_scratch(header: Header) -> int:
    """What the format's decoder holds beside the decoded image, at most."""
    pixels = header.pixels
    if header.format == "JPEG" and header.jpeg_all_coefficients:
        return _jpeg_coefficients(header.jpeg_sampling, header.width, header.height)
    if header.format == "WEBP":
        # Pillow's decoder keeps two RGBA canvases and hands over a third copy as
        # bytes (measured: 12 bytes a pixel beside the image), after reading the
        # whole file into one more buffer.
        return 12 * pixels + header.input_bytes
    if header.format == "TIFF":
        # A strip or tile can be the whole image, raw; the file may be read whole.
        return math.ceil(header.stored_bits_per_pixel * pixels / 8) + header.input_bytes
    if header.format == "BMP" and header.run_length:
        return 2 * pixels  # a bytearray of the expanded indices, then a bytes copy
    if header.format == "GIF":
        return pixels  # a first frame that disposes to the background keeps a fill
    return 0


# What libwebp and libavif hold while encoding, in bytes per output pixel (measured
# with Pillow 13 on a 12 MP photo-like image: WebP method 4 12.5 for RGB, 14.8 for
# grey, which it makes RGB first; AVIF 24.5 RGB at speed 6-8), with some room.
_ENCODER_BYTES_PER_PIXEL = {"WEBP": 16, "AVIF": 28}


def _encoder_bytes(output_format: str, mode: str, width: int, height: int) -> int:
    if output_format in _ENCODER_BYTES_PER_PIXEL:
        return _ENCODER_BYTES_PER_PIXEL[output_format] * width * height
    if output_format != "JPEG":
        raise ValueError(f"no memory model for {output_format} output")
    # Optimised Huffman tables need every coefficient before the first byte is
    # written; the encoder then writes into a buffer of about a byte a pixel.
    sampling = ((2, 2), (1, 1), (1, 1)) if mode == "RGB" else ((1, 1),)  # 4:2:0
    return _jpeg_coefficients(sampling, width, height) + width * height


def _jpeg_coefficients(sampling: tuple[tuple[int, int], ...], width: int, height: int) -> int:
    """Bytes for every DCT coefficient: 2 per sample, each plane padded to whole MCUs."""
    if not sampling:
        sampling = ((1, 1),) * 4  # unknown: as many planes as CMYK, none subsampled
    h_max = max(h for h, _ in sampling)
    v_max = max(v for _, v in sampling)
    mcu_columns = math.ceil(width / (8 * h_max))
    mcu_rows = math.ceil(height / (8 * v_max))
    blocks_per_mcu = sum(h * v for h, v in sampling)
    return mcu_columns * mcu_rows * blocks_per_mcu * 64 * 2


def _kind(header: Header) -> str:
    described = f"{header.mode} {header.format}"
    if header.format == "JPEG" and header.jpeg_all_coefficients:
        described = f"progressive or multi-scan {described}"
    if header.orientation in range(2, 9):
        described += " to be rotated"
    return described


def _mb(size: int) -> int:
    return round(size / 1_000_000)

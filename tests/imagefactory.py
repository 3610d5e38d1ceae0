"""Deterministic, real test images as bytes, for unit tests and the end-to-end test.

The content is photo-like (smooth gradients, soft shapes, mild grain) and saved at
high quality, as product photos are, so a quality-50 JPEG of it is clearly smaller.
Markers that tests look for (pure red, pure cyan, a transparent band...) are drawn
after the grain so their pixels are exact. Everything is built from a fixed seed
and cached: the same bytes every call, generated once per process.
"""

from __future__ import annotations

import io
import itertools
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageCms, ImageDraw, ImageFilter

W, H = 640, 480
MARKER = 64  # side of the solid marker squares, in pixels
RED = (255, 0, 0)
GREY16_BLOCKS = {16384: (40, 40), 32768: (140, 40), 49152: (240, 40)}  # value -> top-left


@lru_cache
def _photo(size: tuple[int, int] = (W, H), seed: int = 1) -> Image.Image:
    """A smooth, colourful RGB picture with a little grain. Callers must .copy() it."""
    w, h = size
    down = Image.linear_gradient("L").resize(size)
    across = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize(size)
    glow = Image.radial_gradient("L").resize(size)
    im = Image.merge("RGB", (down, across, glow))
    draw = ImageDraw.Draw(im)
    rng = random.Random(seed)
    for _ in range(12):
        x, y = rng.randrange(w), rng.randrange(h)
        r = rng.randrange(w // 20, w // 5)
        colour = tuple(rng.randrange(40, 230) for _ in range(3))
        shape = draw.ellipse if rng.random() < 0.6 else draw.rectangle
        shape((x - r, y - r, x + r, y + r), fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(4))
    grain = Image.frombytes("L", size, rng.randbytes(w * h)).filter(ImageFilter.GaussianBlur(0.6))
    return Image.blend(im, Image.merge("RGB", (grain, grain, grain)), 0.08)


def photo(size: tuple[int, int] = (W, H), seed: int = 1) -> Image.Image:
    """The picture most cases are made from, as a fresh RGB image to compare against."""
    return _photo(size, seed).copy()


def _save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


# --- good images ------------------------------------------------------------------


@lru_cache
def jpeg_rgb() -> bytes:
    return _save(_photo(), "JPEG", quality=95)


@lru_cache
def jpeg_exif_rotated() -> bytes:
    """Stored 640x480 with Orientation=6; displayed 480x640 with a red square top-left.

    Also carries GPS, a camera make, XMP and a JPEG comment, all of which the
    transform must drop.
    """
    displayed = _photo((H, W), seed=2).copy()
    ImageDraw.Draw(displayed).rectangle((0, 0, MARKER - 1, MARKER - 1), fill=RED)
    # Orientation 6 means "rotate 90 degrees clockwise to display", so store it
    # rotated the other way.
    stored = displayed.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    exif[0x010F] = "ImageFactory Camera"  # Make
    exif[0x8825] = {  # GPS IFD: Berlin
        1: "N",
        2: (52.0, 31.0, 12.0),
        3: "E",
        4: (13.0, 24.0, 18.0),
    }
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    return _save(stored, "JPEG", quality=95, exif=exif, xmp=xmp, comment=b"secret note")


def _with_cyan_block(im: Image.Image) -> Image.Image:
    cmyk = im.convert("CMYK")
    ImageDraw.Draw(cmyk).rectangle((0, 0, MARKER - 1, MARKER - 1), fill=(255, 0, 0, 0))
    return cmyk


@lru_cache
def jpeg_cmyk() -> bytes:
    """A CMYK JPEG without a profile; pure cyan top-left, the photo elsewhere."""
    return _save(_with_cyan_block(_photo()), "JPEG", quality=95)


@lru_cache
def jpeg_cmyk_icc() -> bytes:
    """A CMYK JPEG with the press-like profile of `cmyk_icc_profile()` embedded."""
    return _save(_with_cyan_block(_photo()), "JPEG", quality=95, icc_profile=cmyk_icc_profile())


@lru_cache
def jpeg_grey() -> bytes:
    return _save(_photo().convert("L"), "JPEG", quality=95)


@lru_cache
def jpeg_with_icc() -> bytes:
    return _save(_photo(), "JPEG", quality=95, icc_profile=srgb_icc_profile())


@lru_cache
def png_rgba() -> bytes:
    """Left quarter fully transparent (black underneath), a 50% black square, rest opaque."""
    im = _photo().copy()
    alpha = Image.new("L", im.size, 255)
    draw_alpha, draw_rgb = ImageDraw.Draw(alpha), ImageDraw.Draw(im)
    draw_alpha.rectangle((0, 0, W // 4 - 1, H - 1), fill=0)
    draw_rgb.rectangle((0, 0, W // 4 - 1, H - 1), fill=(0, 0, 0))
    draw_alpha.rectangle((300, 200, 363, 263), fill=128)
    draw_rgb.rectangle((300, 200, 363, 263), fill=(0, 0, 0))
    im.putalpha(alpha)
    return _save(im, "PNG", compress_level=1)  # fast to build; still far bigger than a JPEG


@lru_cache
def png_palette_transparent() -> bytes:
    """Mode P, 64 colours; the top band uses a transparent, black palette entry."""
    im = _photo().quantize(63, method=Image.Quantize.FASTOCTREE)
    palette = (im.getpalette() or [])[: 63 * 3]
    im.putpalette(palette + [0] * (64 * 3 - len(palette)))  # index 63: black
    ImageDraw.Draw(im).rectangle((0, 0, W - 1, MARKER - 1), fill=63)
    return _save(im, "PNG", transparency=63)


@lru_cache
def gif() -> bytes:
    """Two frames: the first has a green square top-left, the second a blue one."""
    frames = []
    for colour in ((0, 255, 0), (0, 0, 255)):
        frame = _photo().copy()
        ImageDraw.Draw(frame).rectangle((0, 0, MARKER - 1, MARKER - 1), fill=colour)
        frames.append(frame.quantize(255, method=Image.Quantize.FASTOCTREE))
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


@lru_cache
def webp() -> bytes:
    return _save(_photo(), "WEBP", quality=95, method=0)  # method 0: fastest encoder


@lru_cache
def png_grey16() -> bytes:
    """Mode I;16, using the full 16-bit range, with three flat blocks of known value."""
    im = _photo().convert("L").convert("I").point(lambda v: v * 257).convert("I;16")
    draw = ImageDraw.Draw(im)
    for value, (x, y) in GREY16_BLOCKS.items():
        draw.rectangle((x, y, x + MARKER - 1, y + MARKER - 1), fill=value)
    return _save(im, "PNG", compress_level=1)


@lru_cache
def png_la() -> bytes:
    """Grey with alpha (mode LA), the same transparent band and 50% square as png_rgba."""
    rgba = Image.open(io.BytesIO(png_rgba()))
    grey = rgba.convert("L")
    grey.putalpha(rgba.getchannel("A"))
    return _save(grey, "PNG", compress_level=1)


@lru_cache
def png_rgba16() -> bytes:
    """16 bits a sample RGBA (Pillow decodes it to 8-bit RGBA), alpha as in png_rgba.

    Written by hand: Pillow cannot save 16-bit colour PNGs.
    """
    rgba = Image.open(io.BytesIO(png_rgba())).tobytes()
    wide = bytearray(2 * len(rgba))
    wide[0::2] = wide[1::2] = rgba  # v * 257: the same value on the 16-bit scale
    stride = 8 * W
    rows = b"".join(b"\x00" + wide[y * stride : (y + 1) * stride] for y in range(H))
    ihdr = struct.pack(">IIBBBBB", W, H, 16, 6, 0, 0, 0)  # 16-bit RGBA
    return _png(_chunk(b"IHDR", ihdr), _chunk(b"IDAT", zlib.compress(rows, 1)))


@lru_cache
def png_palette_alpha() -> bytes:
    """Mode P whose tRNS gives entry 0 (black) 50% alpha: the top band is mid grey on white."""
    im = _photo().quantize(63, method=Image.Quantize.FASTOCTREE)
    palette = (im.getpalette() or [])[: 63 * 3]
    im.putpalette([0, 0, 0, *palette[3:]])  # entry 0: black
    ImageDraw.Draw(im).rectangle((0, 0, W - 1, MARKER - 1), fill=0)
    return _save(im, "PNG", transparency=bytes([128] + [255] * 62))


@lru_cache
def jpeg_progressive() -> bytes:
    return _save(_photo(), "JPEG", quality=95, progressive=True)


@lru_cache
def jpeg_oriented(orientation: int) -> bytes:
    """A photo with a red square top-left as displayed, stored for EXIF `orientation`."""
    displayed = _photo((W, H), seed=3).copy()
    ImageDraw.Draw(displayed).rectangle((0, 0, MARKER - 1, MARKER - 1), fill=RED)
    # Each orientation names the turn that displays the stored image; store the
    # displayed one turned back.
    undo = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    stored = displayed if undo is None else displayed.transpose(undo)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(stored, "JPEG", quality=95, exif=exif)


@lru_cache
def bmp() -> bytes:
    return _save(_photo(), "BMP")


@lru_cache
def tiff() -> bytes:
    return _save(_photo(), "TIFF")


# --- broken images ----------------------------------------------------------------


@lru_cache
def truncated_jpeg() -> bytes:
    data = jpeg_rgb()
    return data[: len(data) // 2]


def not_an_image() -> bytes:
    return (
        b"<!DOCTYPE html>\n<html><head><title>Page not found</title></head>"
        b"<body><h1>Sorry, that product is gone.</h1></body></html>\n"
    )


def empty() -> bytes:
    return b""


@lru_cache
def unsupported_format() -> bytes:
    """A valid image in a format Pillow reads but the service does not accept (PPM)."""
    return _save(_photo((64, 48)), "PPM")


@lru_cache
def png_bomb(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of the given size: tiny on disk, huge decoded.

    Written by hand, row by row, so building it never holds the decoded image.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    deflate = zlib.compressobj(9)
    rows_per_chunk = max(1, 1_000_000 // len(row))
    idat = bytearray()
    for start in range(0, height, rows_per_chunk):
        idat += deflate.compress(row * min(rows_per_chunk, height - start))
    idat += deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", bytes(idat))
        + _chunk(b"IEND")
    )


def _chunk(kind: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def decompression_bomb() -> bytes:
    """9000x9000 = 81 Mpx: over the default 50 Mpx limit, under Pillow's own warning."""
    return png_bomb(9000, 9000)


# --- big and oddly shaped images: memory and side limits --------------------------

# PNG colour types -> samples per pixel.
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def png_stripes(
    width: int,
    height: int,
    colour_type: int = 6,
    bit_depth: int = 8,
    *,
    before_pixels: bytes = b"",
    after_pixels: bytes = b"",
) -> bytes:
    """A valid PNG of vertical stripes, any size, small on disk and cheap to build.

    The first row holds the stripes; every other row is "same as above" (PNG's Up
    filter with zero differences), so even 7070x7070 RGBA is ~200 KB and is
    built row by row, never held decoded. `before_pixels` and `after_pixels` are
    extra chunks (`png_chunk`) around the pixel data. Colour type 6 is RGBA, 2 RGB,
    4 grey with alpha, 0 grey, 3 palette (give PLTE in `before_pixels`).
    """
    row_bytes = (width * _PNG_SAMPLES[colour_type] * bit_depth + 7) // 8
    deflate = zlib.compressobj(9)
    stripes = bytes((i * 7) % 251 for i in range(min(row_bytes, 1 << 16)))
    idat = bytearray(deflate.compress(b"\x00" + stripes))
    zeros = bytes(min(row_bytes, 1 << 22))
    for start in range(len(stripes), row_bytes, len(zeros)):  # a very wide first row
        idat += deflate.compress(zeros[: row_bytes - start])
    if height > 1:
        same = b"\x02" + bytes(row_bytes)
        per_call = max(1, 4_000_000 // len(same))
        for start in range(1, height, per_call):
            idat += deflate.compress(same * min(per_call, height - start))
    idat += deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    pixels = _chunk(b"IDAT", bytes(idat))
    return _png(_chunk(b"IHDR", ihdr), before_pixels, pixels, after_pixels)


def png_chunk(kind: bytes, body: bytes = b"") -> bytes:
    return _chunk(kind, body)


def exif_orientation_chunk(orientation: int) -> bytes:
    """A PNG eXIf chunk holding only an EXIF orientation."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _chunk(b"eXIf", exif.tobytes().removeprefix(b"Exif\x00\x00"))


def png_wide() -> bytes:
    """49,900,000 x 1 RGB: under 50 MP, but no JPEG can be that wide (~0.6 MB on disk)."""
    return png_stripes(49_900_000, 1, 2)


def _png(*chunks: bytes) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + _chunk(b"IEND")


# --- colour profiles --------------------------------------------------------------


@lru_cache
def srgb_icc_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# Printed colour of each ink at 100% on white paper, in sRGB (typical coated stock).
INKS = {"C": (0, 158, 224), "M": (236, 0, 140), "Y": (255, 242, 0), "K": (35, 31, 32)}


@lru_cache
def cmyk_icc_profile() -> bytes:
    """A small but real ICC v2 CMYK output profile (A2B0 lut16 to Lab, 5-point grid).

    It models press inks rather than Pillow's naive formula, so pure cyan becomes
    about (0, 158, 224) in sRGB instead of (0, 255, 255): a test can tell which
    conversion ran. LittleCMS only needs A2B0 to use it as a source profile.
    """
    grid = 5
    clut = bytearray()
    # ICC CLUT order: the first input channel varies slowest.
    for cmyk in itertools.product(range(grid), repeat=4):
        rgb = [1.0, 1.0, 1.0]
        for amount, ink in zip(cmyk, INKS.values(), strict=True):
            for i in range(3):
                rgb[i] *= 1 - amount / (grid - 1) * (1 - ink[i] / 255)
        lab = _srgb_to_lab(rgb)
        # Legacy 16-bit Lab encoding used by lut16Type.
        clut += struct.pack(
            ">3H",
            *(
                min(65535, max(0, round(v)))
                for v in (lab[0] * 652.8, *((c + 128) * 256 for c in lab[1:]))
            ),
        )
    identity = struct.pack(">9i", *(65536 if i % 4 == 0 else 0 for i in range(9)))
    ramp = struct.pack(">2H", 0, 65535)
    a2b0 = b"mft2\0\0\0\0" + bytes([4, 3, grid, 0]) + identity + struct.pack(">2H", 2, 2)
    a2b0 += ramp * 4 + bytes(clut) + ramp * 3
    d50 = struct.pack(">3i", *(round(v * 65536) for v in (0.9642, 1.0, 0.8249)))
    name = b"imagefactory press CMYK\0"
    tags = {
        b"desc": b"desc\0\0\0\0" + struct.pack(">I", len(name)) + name + bytes(4 + 4 + 2 + 1 + 67),
        b"cprt": b"text\0\0\0\0" + b"Public domain\0",
        b"wtpt": b"XYZ \0\0\0\0" + d50,
        b"A2B0": a2b0,
    }
    table, body = b"", b""
    offset = 128 + 4 + 12 * len(tags)
    for sig, data in tags.items():
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    header = (
        b"\0\0\0\0"  # preferred CMM
        + struct.pack(">I", 0x02100000)
        + b"prtrCMYKLab "
        + struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
        + b"acsp"
        + bytes(4 + 4 + 4 + 4 + 8 + 4)  # platform, flags, maker, model, attributes, intent
        + d50
        + bytes(4 + 16 + 28)  # creator, profile id, reserved
    )
    profile = header + struct.pack(">I", len(tags)) + table + body
    return struct.pack(">I", len(profile) + 4) + profile


def _srgb_to_lab(rgb: list[float]) -> tuple[float, float, float]:
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    # sRGB -> XYZ, Bradford-adapted to D50 (the ICC connection space's white).
    matrix = (
        (0.4360747, 0.3850649, 0.1430804),
        (0.2225045, 0.7168786, 0.0606169),
        (0.0139322, 0.0971045, 0.7141733),
    )
    white = (0.9642, 1.0, 0.8249)
    xyz = [
        sum(m * c for m, c in zip(row, linear, strict=True)) / w
        for row, w in zip(matrix, white, strict=True)
    ]
    f = [t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116 for t in xyz]
    return 116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])


# --- tiny seeds for fuzzing ---------------------------------------------------------


@lru_cache
def tiny_images() -> dict[str, bytes]:
    """Small valid images, one per supported format, for mutation-based fuzzing."""
    im = _photo((24, 16))
    return {
        "JPEG": _save(
            im, "JPEG", quality=90, exif=Image.open(io.BytesIO(jpeg_exif_rotated())).getexif()
        ),
        "PNG": _save(im.convert("RGBA"), "PNG"),
        "WEBP": _save(im, "WEBP"),
        "GIF": _save(im.quantize(16), "GIF"),
        "BMP": _save(im, "BMP"),
        "TIFF": _save(im, "TIFF"),
    }


# --- catalogue ----------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What compressing a good case should give: the displayed size and the JPEG mode."""

    size: tuple[int, int]
    mode: str
    source_format: str


GOOD: dict[str, Expect] = {
    "jpeg_rgb": Expect((W, H), "RGB", "JPEG"),
    "jpeg_exif_rotated": Expect((H, W), "RGB", "JPEG"),
    "jpeg_cmyk": Expect((W, H), "RGB", "JPEG"),
    "jpeg_cmyk_icc": Expect((W, H), "RGB", "JPEG"),
    "jpeg_grey": Expect((W, H), "L", "JPEG"),
    "jpeg_with_icc": Expect((W, H), "RGB", "JPEG"),
    "png_rgba": Expect((W, H), "RGB", "PNG"),
    "png_palette_transparent": Expect((W, H), "RGB", "PNG"),
    "gif": Expect((W, H), "RGB", "GIF"),
    "webp": Expect((W, H), "RGB", "WEBP"),
    "png_grey16": Expect((W, H), "L", "PNG"),
    "png_la": Expect((W, H), "L", "PNG"),
    "png_rgba16": Expect((W, H), "RGB", "PNG"),
    "png_palette_alpha": Expect((W, H), "RGB", "PNG"),
    "jpeg_progressive": Expect((W, H), "RGB", "JPEG"),
    "bmp": Expect((W, H), "RGB", "BMP"),
    "tiff": Expect((W, H), "RGB", "TIFF"),
}

# Broken case -> a phrase its rejection reason must contain.
BROKEN: dict[str, str] = {
    "truncated_jpeg": "truncated JPEG data",
    "not_an_image": "not a supported image",
    "empty": "empty",
    "unsupported_format": "not a supported image",
    "decompression_bomb": "over the limit of",
}

CASES: dict[str, Callable[[], bytes]] = {name: globals()[name] for name in (*GOOD, *BROKEN)}

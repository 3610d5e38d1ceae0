"""The pure image transform: downloaded bytes in, a compressed image and its metadata out.

No I/O and no shared state: `compress` reads only its arguments and returns a new
value, so Dask can run it in any thread. Every way the bytes can be unusable ends
in `ImageRejected(reason)`, which the task records as that image's failure.

Pillow reports a few oddities with `warnings.warn` (an image over its own
decompression-bomb threshold, corrupt EXIF). We do not silence them here:
`warnings.catch_warnings` swaps process-wide state and is not thread-safe before
Python 3.14. Where a filter turns them into errors (as the test suite does) they
become an `ImageRejected` like any other decoding failure; otherwise Python logs
them once and our own limits (pixels, sides, memory), checked before decoding,
still apply.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import cast

from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError

from pipeline import image_plan
from pipeline.errors import ImageRejected
from pipeline.image_plan import Header, Route
from pipeline.options import DEFAULT_OPTIONS, MAX_QUALITY, MIN_QUALITY, OutputOptions, fit_inside
from pipeline.settings import DEFAULTS

SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Orientations whose turn swaps width and height.
_SWAPS_SIDES = frozenset({5, 6, 7, 8})
# AVIF's encoder speed (0 slowest .. 10 fastest). On the bench corpus at equal mean
# SSIM (python -m tests.bench.calibrate): speed 8 takes 211 ms of CPU an image for
# 67.6% of JPEG q50's bytes, speed 6 614 ms for 59.6%; 8 keeps AVIF usable.
AVIF_SPEED = 8
# Resizing as Pillow's own thumbnail() does: `reducing_gap` first shrinks by whole
# factors with a box filter (cheap), leaving bicubic at most 2x to do. Measured on
# 60 bench-corpus JPEGs fitted into 512x512 after a draft decode, against Lanczos
# from the full-size decode: mean SSIM 0.9855 in 3.5 ms, Lanczos (gap 3) 0.9878 in
# 4.8 ms, bilinear 0.9757 in 2.2 ms.
RESIZE_FILTER = Image.Resampling.BICUBIC
REDUCING_GAP = 2.0
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


def compress(
    data: bytes,
    options: OutputOptions = DEFAULT_OPTIONS,
    *,
    max_pixels: int = DEFAULTS.max_pixels,
    max_memory: int | None = None,
) -> Compressed:
    """Decode `data` (format sniffed, never trusted), make it upright, RGB or L, fit it
    inside the options' box, and encode it in the options' format and quality.

    Metadata is dropped (EXIF and so GPS, XMP, comments); only an ICC profile that
    still describes the output pixels is kept. Raises `ImageRejected` for bytes that
    are not a complete, supported image of at most `max_pixels` pixels whose output
    fits the format and whose conversion needs at most `max_memory` bytes (default:
    the budget `image_plan` derives from `max_pixels`); all three are judged from
    the header, before any pixel is decoded.
    """
    # Bad settings are the caller's bug, not the image's: don't record them per image.
    if not MIN_QUALITY <= options.quality <= MAX_QUALITY:
        raise ValueError(f"quality must be {MIN_QUALITY}..{MAX_QUALITY}, got {options.quality}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if max_memory is None:
        max_memory = image_plan.default_memory_budget(max_pixels)
    if max_memory < 1:
        raise ValueError(f"max_memory must be positive, got {max_memory}")
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    output_format = options.format.upper()

    def check(header: Header, size: tuple[int, int]) -> None:
        reason = image_plan.refusal(
            header,
            max_pixels=max_pixels,
            max_memory=max_memory,
            output_format=output_format,
            output_size=size,
        )
        if reason:
            raise ImageRejected(reason)

    source_format = _sniff(data) or "image"  # for the reason, if even the header is bad
    try:
        with Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS) as im:
            source_format, source_mode = im.format or "image", im.mode
            # Only the header has been read so far, so a bomb costs nothing yet.
            header = _header(im, data, decoded=False)
            source_size = im.size
            size = _output_size(source_size, header.orientation, options)
            check(header, size)
            _draft(im, header, size)
            im.load()  # decode everything now: truncated data fails here, not later
            # Decoding can reveal an EXIF rotation (a PNG's eXIf chunk may follow
            # its pixels), and a draft decodes fewer pixels: judge the rest by
            # what is known now. The output's size is the source's, fitted, however
            # many pixels the draft decoded.
            header = _header(im, data, decoded=True)
            size = _output_size(source_size, header.orientation, options)
            check(header, size)
            route = image_plan.route(header)
            icc = im.info.get("icc_profile") or None
            out = _convert(im, route, icc)
            if out is not im:
                im.close()  # release the decoded pixels before the next copy
            out = _resize(out, _stored_size(size, header.orientation))
            out = _turn(out, header.orientation)
            # CMYK converted through its profile is sRGB: left untagged, as browsers
            # read untagged images, which also saves the profile's bytes.
            keep_icc = route.name != "CMYK to RGB" and _describes(icc, out.mode)
            encoded = _encode(out, options, icc if keep_icc else None)
            width, height = out.size
            out.close()
            return Compressed(
                data=encoded,
                width=width,
                height=height,
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


def _output_size(
    source: tuple[int, int], orientation: int, options: OutputOptions
) -> tuple[int, int]:
    """The upright output's size: the upright source fitted inside the options' box."""
    width, height = source
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return fit_inside(width, height, options.max_width, options.max_height)


def _stored_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """An upright size as the pixels are stored, before the EXIF turn."""
    return (size[1], size[0]) if orientation in _SWAPS_SIDES else size


def _draft(im: Image.Image, header: Header, size: tuple[int, int]) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale when the output is that much smaller.

    libjpeg then skips most of the inverse DCT work and memory: the decoded image
    is still at least the output's size, so the resize that follows loses nothing.
    """
    if header.format != "JPEG":
        return
    target = _stored_size(size, header.orientation)
    if 2 * target[0] <= header.width and 2 * target[1] <= header.height:
        im.draft(None, target)


def _resize(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    if im.size == size:
        return im
    resized = im.resize(size, RESIZE_FILTER, reducing_gap=REDUCING_GAP)
    im.close()
    return resized


def _header(im: Image.Image, data: bytes, *, decoded: bool) -> Header:
    """What `image_plan` needs to know of `im`, read without decoding its pixels."""
    fmt = im.format or "image"
    palette = im.palette if im.mode == "P" else None
    return Header(
        format=fmt,
        mode=im.mode,
        width=im.width,
        height=im.height,
        input_bytes=len(data),
        transparency="transparency" in im.info,
        palette_rgb=palette is not None and palette.mode == "RGB",
        orientation=_orientation(im, decoded=decoded),
        jpeg_sampling=tuple((h, v) for _, h, v, _ in getattr(im, "layer", ())),
        jpeg_all_coefficients=fmt == "JPEG" and image_plan.jpeg_holds_all_coefficients(data),
        stored_bits_per_pixel=_stored_bits_per_pixel(im) if fmt == "TIFF" else 0,
        run_length=fmt == "BMP" and im.info.get("compression") in (1, 2),  # RLE8, RLE4
    )


def _orientation(im: Image.Image, *, decoded: bool) -> int:
    # A PNG may keep its EXIF after the pixels, and Pillow decodes the whole
    # image to find it: before decoding, take it as upright and ask again after.
    if not decoded and im.format == "PNG" and "exif" not in im.info:
        return 1
    orientation = im.getexif().get(ExifTags.Base.Orientation, 1)  # EXIF, else XMP
    return orientation if orientation in _TURNS else 1


def _convert(im: Image.Image, route: Route, icc: bytes | None) -> Image.Image:
    """The decoded image as RGB or L, by `route`; `im` itself when it already is."""
    match route.name:
        case "as is":
            return im
        case "CMYK to RGB":
            return _cmyk_to_rgb(im, icc)
        case "flatten RGBA" | "flatten LA":
            return _paste_on_white(im, route.output_mode)
        case "flatten palette":
            return _flatten_palette(im)
        case "flatten via RGBA":
            # convert("RGBA") also turns tRNS / palette transparency into real alpha.
            rgba = im.convert("RGBA")
            flat = _paste_on_white(rgba, "RGB")
            rgba.close()
            if route.output_mode == "RGB":
                return flat
            grey = flat.convert("L")
            flat.close()
            return grey
        case "bilevel to grey":
            return im.convert("L")
        case "16-bit grey to 8" | "wide grey to 8":
            return _grey_to_8bit(im)
        case "to RGB":  # P without transparency, YCbCr, HSV...
            return im.convert("RGB")


def _describes(icc: bytes | None, mode: str) -> bool:
    # Flattening and palette expansion don't change the colour space, so an RGB
    # or grey profile still describes the output when its space matches its mode.
    return icc is not None and len(icc) >= 128 and icc[16:20] == _ICC_SPACE[mode]


def _paste_on_white(im: Image.Image, mode: str) -> Image.Image:
    out = Image.new(mode, im.size, 255 if mode == "L" else (255, 255, 255))
    # Pasting through its own alpha onto an opaque background is "over"
    # compositing; `mask=im` uses the alpha band in place, with no copy of it.
    out.paste(im, mask=im)
    return out


def _flatten_palette(im: Image.Image) -> Image.Image:
    """Composite the palette's colours onto white, then expand: no RGBA copy needed."""
    colours = im.getpalette("RGB") or []
    count = len(colours) // 3
    transparency = im.info.pop("transparency")  # `im` is ours; the input is untouched
    if isinstance(transparency, int):
        alphas = [0 if index == transparency else 255 for index in range(count)]
    else:  # PNG tRNS: one alpha per entry, the rest opaque
        alphas = [*transparency[:count], *[255] * (count - len(transparency))]
    flat = [
        (colour * alpha + 255 * (255 - alpha) + 127) // 255
        for index, alpha in enumerate(alphas)
        for colour in colours[3 * index : 3 * index + 3]
    ]
    im.putpalette(flat, "RGB")
    return im.convert("RGB")


def _turn(im: Image.Image, orientation: int) -> Image.Image:
    """Apply the EXIF orientation to the converted image (the smaller copy for most)."""
    if (method := _TURNS.get(orientation)) is None:
        return im
    turned = im.transpose(method)
    im.close()
    return turned


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
            rgb = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
            if rgb is not None:  # always, as inPlace is False (it returns None in place)
                return rgb
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # an unusable profile should not cost the image; use Pillow's formula
    return im.convert("RGB")


def _stored_bits_per_pixel(im: Image.Image) -> int:
    """Bits per pixel of the buffer libtiff decodes a strip or tile into."""
    tags = getattr(im, "tag_v2", {})
    if tags.get(262) == 6:  # PhotometricInterpretation YCbCr: read out as RGBA
        return 32
    bits = tags.get(258, (1,))  # BitsPerSample
    bits = bits if isinstance(bits, tuple) else (bits,)
    samples = int(tags.get(277, len(bits)))  # SamplesPerPixel
    return sum(bits) if len(bits) == samples else int(bits[0]) * samples


def _encode(im: Image.Image, options: OutputOptions, icc: bytes | None) -> bytes:
    buf = io.BytesIO()
    if options.format == "jpeg":
        im.save(
            buf,
            "JPEG",
            quality=options.quality,
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
    elif options.format == "webp":
        # WebP has no grey images: the encoder makes L into RGB, which a grey
        # profile no longer describes.
        im.save(
            buf,
            "WEBP",
            quality=options.quality,
            method=4,  # libwebp's own default: 0 (Pillow's) is 10-15% larger
            icc_profile=icc if im.mode == "RGB" else None,
            exif=b"",
            xmp=b"",
        )
    else:
        im.save(
            buf,
            "AVIF",
            quality=options.quality,
            speed=AVIF_SPEED,
            # One thread: Dask already runs one task per core; the encoder's own
            # threads would only contend with them.
            max_threads=1,
            icc_profile=icc,
            exif=b"",
            xmp=b"",
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
    # Hosts answer a missing image with a text body ("Not Found", a JSON error, a
    # CSV): its first words say more than its first bytes in hex. Text is UTF-8
    # (ASCII included) with nothing but printable characters and white space;
    # a character cut at the 512th byte decodes as one U+FFFD, which is dropped.
    text = data[:512].decode("utf-8", errors="replace").removeprefix("\ufeff")
    if len(data) > 512:
        text = text.removesuffix("\ufffd")
    words = " ".join(text.split())  # any run of white space, line breaks too: one space
    if words and "\ufffd" not in words and words.isprintable():
        excerpt = words[:40].rstrip() + "…" if len(words) > 40 or len(data) > 512 else words
        quoted = excerpt.replace("\\", "\\\\").replace('"', '\\"')
        return f'looks like text: "{quoted}"'
    expected = ", ".join(SUPPORTED_FORMATS)
    return f"starts with {data[:8].hex(' ')}; expected {expected}"

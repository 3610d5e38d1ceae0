"""Unit tests of the pure transform, on real images from tests.imagefactory."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageStat

from pipeline.errors import ImageRejected
from pipeline.options import OutputOptions
from pipeline.transform import SUPPORTED_FORMATS, Compressed, compress
from tests import imagefactory as images

MARKER = images.MARKER
INSIDE_MARKER = (8, 8, MARKER - 8, MARKER - 8)  # away from JPEG ringing at the edges


def decode(result: Compressed) -> Image.Image:
    im = Image.open(io.BytesIO(result.data), formats=["JPEG"])
    im.load()
    return im


def mean(im: Image.Image, box: tuple[int, int, int, int]) -> list[float]:
    return ImageStat.Stat(im.crop(box)).mean


def near(actual: list[float], expected: tuple[float, ...], tolerance: float = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# --- every good case --------------------------------------------------------------


@pytest.mark.parametrize("name", images.GOOD)
def test_good_image_becomes_a_smaller_upright_jpeg(name):
    data = images.CASES[name]()
    expect = images.GOOD[name]

    result = compress(data)

    out = decode(result)
    assert out.format == "JPEG"
    assert out.mode == expect.mode
    assert out.size == (result.width, result.height) == expect.size
    assert result.source_format == expect.source_format
    assert len(result.data) < len(data)
    assert not out.getexif()
    assert not {"exif", "xmp", "comment"} & out.info.keys()


def test_reports_source_mode():
    assert compress(images.png_rgba()).source_mode == "RGBA"
    assert compress(images.png_grey16()).source_mode == "I;16"
    assert compress(images.jpeg_cmyk()).source_mode == "CMYK"


# --- orientation and metadata -----------------------------------------------------


def test_exif_orientation_is_applied_and_all_metadata_dropped():
    data = images.jpeg_exif_rotated()
    with Image.open(io.BytesIO(data)) as original:  # what the camera wrote
        assert original.size == (640, 480)
        assert original.getexif()[0x0112] == 6
        assert original.getexif().get_ifd(0x8825)  # GPS
        assert {"xmp", "comment"} <= original.info.keys()
        assert not near(mean(original.convert("RGB"), INSIDE_MARKER), images.RED)

    result = compress(data)

    out = decode(result)
    assert out.size == (480, 640)
    w, h = out.size
    assert near(mean(out, INSIDE_MARKER), images.RED)
    for corner in ((w - MARKER, 0), (0, h - MARKER), (w - MARKER, h - MARKER)):
        box = (corner[0] + 8, corner[1] + 8, corner[0] + MARKER - 8, corner[1] + MARKER - 8)
        assert not near(mean(out, box), images.RED)
    assert not out.getexif()
    for marker in (b"Exif\x00\x00", b"http://ns.adobe.com/xap", b"secret note", b"Camera"):
        assert marker not in result.data


# --- colour modes -----------------------------------------------------------------


def test_transparency_is_composited_onto_white():
    out = decode(compress(images.png_rgba()))

    assert out.mode == "RGB"
    # Fully transparent (black underneath): white, not the hidden black.
    assert near(mean(out, (10, 10, 150, 470)), (255, 255, 255), tolerance=3)
    # 50% black over white: mid grey, i.e. real compositing.
    assert near(mean(out, (310, 210, 354, 254)), (127.5, 127.5, 127.5), tolerance=4)


def test_palette_transparency_is_composited_onto_white():
    out = decode(compress(images.png_palette_transparent()))

    assert out.mode == "RGB"
    assert near(mean(out, (10, 8, 630, MARKER - 8)), (255, 255, 255), tolerance=3)


def test_animated_gif_uses_the_first_frame():
    out = decode(compress(images.gif()))

    assert near(mean(out, INSIDE_MARKER), (0, 255, 0), tolerance=20)


def test_cmyk_without_profile_becomes_rgb_with_the_same_colours():
    out = decode(compress(images.jpeg_cmyk()))

    assert out.mode == "RGB"
    assert near(mean(out, INSIDE_MARKER), (0, 255, 255))  # Pillow's formula for pure cyan
    photo = images.photo()
    rest = (MARKER, MARKER, images.W, images.H)
    assert near(mean(out, rest), tuple(mean(photo, rest)), tolerance=3)


def test_cmyk_with_profile_is_converted_through_it_and_not_tagged():
    result = compress(images.jpeg_cmyk_icc())

    out = decode(result)
    assert out.mode == "RGB"
    # The profile's cyan ink is (0, 158, 224), not Pillow's (0, 255, 255).
    assert near(mean(out, INSIDE_MARKER), images.INKS["C"], tolerance=15)
    assert "icc_profile" not in out.info  # untagged means sRGB


def test_icc_profile_is_kept_when_it_describes_the_output():
    out = decode(compress(images.jpeg_with_icc()))

    assert out.info.get("icc_profile") == images.srgb_icc_profile()


def test_sixteen_bit_grey_is_scaled_not_clipped():
    out = decode(compress(images.png_grey16()))

    assert out.mode == "L"
    for value, (x, y) in images.GREY16_BLOCKS.items():
        box = (x + 8, y + 8, x + MARKER - 8, y + MARKER - 8)
        assert near(mean(out, box), (value / 257,), tolerance=2), value


def test_one_bit_image_becomes_grey():
    im = Image.new("1", (64, 48), 1)
    im.paste(0, (0, 0, 32, 48))
    buf = io.BytesIO()
    im.save(buf, "PNG")

    out = decode(compress(buf.getvalue()))

    assert out.mode == "L"
    assert near(mean(out, (40, 0, 64, 48)), (255,), tolerance=3)
    assert near(mean(out, (0, 0, 24, 48)), (0,), tolerance=3)


# --- rejections -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "phrase"), images.BROKEN.items())
def test_broken_input_is_rejected_with_a_reason(name, phrase):
    with pytest.raises(ImageRejected) as caught:
        compress(images.CASES[name]())

    assert phrase in caught.value.reason
    assert str(caught.value) == caught.value.reason


@pytest.mark.parametrize("name", images.GOOD)
def test_any_image_cut_short_is_rejected_as_truncated(name):
    data = images.CASES[name]()

    with pytest.raises(ImageRejected, match="truncated"):
        compress(data[: len(data) * 2 // 3])


def test_bomb_is_rejected_from_its_header():
    # The reason quotes the size from the header: nothing was decoded.
    with pytest.raises(
        ImageRejected, match=r"9000x9000 = 81000000 pixels, over the limit of 50000000"
    ):
        compress(images.decompression_bomb())


def test_pixel_limit_is_inclusive():
    data = images.jpeg_rgb()
    assert compress(data, max_pixels=640 * 480).width == 640
    with pytest.raises(ImageRejected, match="over the limit of 307199"):
        compress(data, max_pixels=640 * 480 - 1)


def test_bomb_over_pillows_hard_limit_is_rejected():
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own bomb check is on
    too_big = 2 * Image.MAX_IMAGE_PIXELS + 1  # Pillow refuses these in Image.open
    with pytest.raises(ImageRejected, match="too large"):
        compress(images.png_bomb(too_big // 16 + 1, 16), max_pixels=10**12)


def test_pillows_bomb_warning_becomes_a_rejection_when_warnings_are_errors():
    # This suite turns warnings into errors, so Pillow's warning itself is caught.
    assert Image.MAX_IMAGE_PIXELS is not None
    data = images.png_bomb(Image.MAX_IMAGE_PIXELS // 16 + 1, 16)
    with pytest.raises(ImageRejected, match="too large"):
        compress(data, max_pixels=10**12)


def test_pillows_bomb_warning_does_not_bypass_our_limit():
    # Where warnings are only logged (production), our own check still rejects.
    assert Image.MAX_IMAGE_PIXELS is not None
    data = images.png_bomb(Image.MAX_IMAGE_PIXELS // 16 + 1, 16)
    with (
        pytest.warns(Image.DecompressionBombWarning),
        pytest.raises(ImageRejected, match="over the limit of 50000000"),
    ):
        compress(data)


@pytest.mark.parametrize("quality", [0, 96, -1, 100])
def test_invalid_quality_is_a_caller_error(quality):
    with pytest.raises(ValueError, match="quality"):
        compress(images.jpeg_rgb(), OutputOptions(quality=quality))


def test_invalid_pixel_limit_is_a_caller_error():
    with pytest.raises(ValueError, match="max_pixels"):
        compress(images.jpeg_rgb(), max_pixels=0)


def test_not_an_image_reason_says_what_it_looks_like():
    with pytest.raises(ImageRejected, match="HTML"):
        compress(images.not_an_image())
    with pytest.raises(ImageRejected, match="PNG signature but an unreadable header"):
        compress(images.png_rgba()[:33])  # signature and IHDR, then nothing
    with pytest.raises(ImageRejected, match="truncated PNG data"):
        compress(images.png_rgba()[:20])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"Not Found", 'not a supported image (looks like text: "Not Found")'),
        (b"Not Found\r\n", 'not a supported image (looks like text: "Not Found")'),
        (
            b'{"error": "not found", "code": 404, "request": "a/b/c.jpg"}',
            'looks like text: "{\\"error\\": \\"not found\\", \\"code\\": 404, \\"req…"',
        ),
        (
            b"S. No.,Product Name,Input Image Urls\n1,Shoe,https://a.example/1.jpg\n",
            'looks like text: "S. No.,Product Name,Input Image Urls 1,S…"',
        ),
        ("Accès refusé\n".encode(), 'looks like text: "Accès refusé"'),
        (b"\xef\xbb\xbfForbidden", 'looks like text: "Forbidden"'),  # a UTF-8 BOM first
        (b"Not Found" * 100, 'looks like text: "Not FoundNot FoundNot FoundNot FoundNot…"'),
    ],
)
def test_a_text_body_is_described_as_text(body, reason):
    with pytest.raises(ImageRejected) as caught:
        compress(body)
    assert reason in caught.value.reason


def test_a_long_text_body_cut_inside_a_character_is_still_text():
    body = "é".encode() * 300  # the 512th byte is the middle of an "é"
    with pytest.raises(ImageRejected, match=r'looks like text: "é{40}…"'):
        compress(body)


@pytest.mark.parametrize(
    "body",
    [
        b"Not\x00Found",  # a NUL: binary
        b"Not Found\x1b[31m",  # a terminal escape
        b"Not \xe2\x80\xaeFound",  # U+202E, which turns text right to left
        b"Not \xff\xfe Found",  # not UTF-8
        bytes(range(256)),
    ],
)
def test_bytes_that_are_not_plain_text_are_shown_in_hex(body):
    with pytest.raises(ImageRejected) as caught:
        compress(body)
    assert "looks like text" not in caught.value.reason
    assert f"starts with {body[:8].hex(' ')}" in caught.value.reason


def test_markup_keeps_its_own_description():
    for body, phrase in [
        (b"<!DOCTYPE html><html><body>Not Found</body></html>", "looks like an HTML page"),
        (b'<?xml version="1.0"?><Error><Code>NoSuchKey</Code></Error>', "looks like XML or SVG"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "looks like XML or SVG"),
    ]:
        with pytest.raises(ImageRejected, match=phrase):
            compress(body)


# --- parameters and purity ----------------------------------------------------------


def test_lower_quality_gives_smaller_output():
    data = images.jpeg_rgb()
    sizes = [len(compress(data, OutputOptions(quality=q)).data) for q in (20, 50, 80, 95)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_input_is_not_mutated_and_output_is_deterministic():
    data = bytearray(images.jpeg_exif_rotated())
    before = bytes(data)

    first = compress(data)  # type: ignore[arg-type]  # mutable on purpose: a change would show

    assert data == before
    assert compress(before) == first


# --- fuzzing ------------------------------------------------------------------------

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written outside tmp_path
    suppress_health_check=[HealthCheck.too_slow],
)


def _outcome(data: bytes) -> Compressed | ImageRejected:
    try:
        return compress(data, max_pixels=1_000_000)
    except ImageRejected as exc:
        return exc


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_only_ever_raise_image_rejected(data):
    _outcome(data)


@FUZZ
@given(
    st.sampled_from(SUPPORTED_FORMATS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    st.integers(0, 10**6),
)
def test_damaged_images_only_ever_raise_image_rejected(fmt, edits, cut):
    data = bytearray(images.tiny_images()[fmt])
    for position, value in edits:
        data[position % len(data)] = value
    result = _outcome(bytes(data[: max(1, cut % (len(data) + 1))]))
    if isinstance(result, Compressed):
        decode(result)


# --- memory and side limits, judged from the header -----------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(orientation):
    out = decode(compress(images.jpeg_oriented(orientation)))

    assert out.size == (images.W, images.H)
    assert near(mean(out, INSIDE_MARKER), images.RED)
    w, h = out.size
    for corner in ((w - MARKER, 0), (0, h - MARKER), (w - MARKER, h - MARKER)):
        box = (corner[0] + 8, corner[1] + 8, corner[0] + MARKER - 8, corner[1] + MARKER - 8)
        assert not near(mean(out, box), images.RED)


def test_grey_with_alpha_is_composited_onto_white():
    out = decode(compress(images.png_la()))

    assert out.mode == "L"
    assert near(mean(out, (10, 10, 150, 470)), (255,), tolerance=3)
    assert near(mean(out, (310, 210, 354, 254)), (127.5,), tolerance=4)


def test_partly_transparent_palette_entries_are_composited_onto_white():
    out = decode(compress(images.png_palette_alpha()))

    assert out.mode == "RGB"
    # Entry 0 is black at 50% alpha: mid grey over white, not black, not white.
    assert near(mean(out, (10, 8, 630, MARKER - 8)), (127.5, 127.5, 127.5), tolerance=4)


def test_sixteen_bit_rgba_is_composited_like_eight_bit():
    eight, sixteen = decode(compress(images.png_rgba())), decode(compress(images.png_rgba16()))

    for box in ((10, 10, 150, 470), (310, 210, 354, 254), (200, 100, 600, 180)):
        assert near(mean(sixteen, box), tuple(mean(eight, box)), tolerance=2)


def test_side_over_the_jpeg_limit_is_refused_from_the_header():
    data = images.png_wide()  # 49.9M x 1: under MAX_PIXELS
    reason = "image is 49900000x1: a JPEG can be at most 65500 pixels on a side"

    with pytest.raises(ImageRejected, match=reason):
        compress(data)
    # The same reason with the pixel data cut off: nothing was decoded to find it.
    with pytest.raises(ImageRejected, match=reason):
        compress(data[:100])


def test_side_at_the_jpeg_limit_is_accepted():
    result = compress(images.png_stripes(65_500, 1, 2))

    assert (result.width, result.height) == (65_500, 1)
    with pytest.raises(ImageRejected, match="at most 65500 pixels on a side"):
        compress(images.png_stripes(1, 65_501, 0))


def test_image_over_the_memory_budget_is_refused_from_the_header():
    data = images.png_stripes(2000, 1500)  # RGBA: about 36 MB to convert

    with pytest.raises(ImageRejected) as caught:
        compress(data, max_memory=30_000_000)
    assert caught.value.reason == (
        "image is 2000x1500 RGBA PNG: converting it needs about 36 MB, "
        "over the limit of 30 MB per image"
    )
    with pytest.raises(ImageRejected, match="needs about 36 MB"):
        compress(data[:200], max_memory=30_000_000)  # header only: nothing decoded
    assert compress(data, max_memory=40_000_000).width == 2000


def test_default_memory_budget_follows_max_pixels():
    data = images.png_stripes(2000, 1500)

    # RGBA at the pixel limit fits the budget derived from that limit...
    assert compress(data, max_pixels=2000 * 1500).width == 2000
    # ...but not once rotated by EXIF (one more image-sized copy).
    rotated = images.png_stripes(2000, 1500, before_pixels=images.exif_orientation_chunk(6))
    with pytest.raises(ImageRejected, match="RGBA PNG to be rotated: converting it needs"):
        compress(rotated, max_pixels=2000 * 1500)
    assert compress(rotated).width == 1500


def test_exif_found_after_the_pixels_is_judged_once_decoded():
    # A PNG may put its eXIf chunk after the pixel data: the rotation is only known
    # after decoding, and the conversion is judged again before it is made.
    data = images.png_stripes(2000, 1500, after_pixels=images.exif_orientation_chunk(6))

    with pytest.raises(ImageRejected, match="to be rotated: converting it needs about 48 MB"):
        compress(data, max_memory=45_000_000)
    result = compress(data, max_memory=55_000_000)
    assert (result.width, result.height) == (1500, 2000)


def test_progressive_jpeg_costs_more_memory_than_baseline():
    # 640x480 RGB: ~2.5 MB baseline; progressive holds ~0.9 MB of coefficients more.
    baseline, progressive = images.jpeg_rgb(), images.jpeg_progressive()

    assert compress(baseline, max_memory=3_000_000).width == images.W
    with pytest.raises(ImageRejected, match="progressive or multi-scan RGB JPEG"):
        compress(progressive, max_memory=3_000_000)
    assert compress(progressive, max_memory=3_500_000).width == images.W


def test_invalid_memory_budget_is_a_caller_error():
    with pytest.raises(ValueError, match="max_memory"):
        compress(images.jpeg_rgb(), max_memory=0)

"""Output options: the pure rules (resolving, fitting) and what `compress` makes of them."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageStat
from PIL.JpegImagePlugin import JpegImageFile

from pipeline.errors import ImageRejected, InputError, OptionError
from pipeline.options import (
    OptionDefaults,
    OutputOptions,
    fit_inside,
    resolve_options,
)
from pipeline.transform import compress
from tests import imagefactory as images

# --- fitting inside a box -------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "box", "fitted"),
    [
        ((4000, 3000), (512, 512), (512, 384)),
        ((3000, 4000), (512, 512), (384, 512)),
        ((4000, 3000), (512, None), (512, 384)),
        ((4000, 3000), (None, 300), (400, 300)),
        ((4000, 3000), (None, None), (4000, 3000)),
        ((300, 200), (512, 512), (300, 200)),  # never enlarged
        ((512, 512), (512, 512), (512, 512)),
        ((1001, 3), (500, None), (500, 1)),  # never below one pixel
        ((10, 50_000), (100, 100), (1, 100)),
    ],
)
def test_fit_inside_keeps_the_aspect_and_never_enlarges(size, box, fitted):
    assert fit_inside(*size, *box) == fitted


@given(
    st.integers(1, 20_000),
    st.integers(1, 20_000),
    st.none() | st.integers(1, 5_000),
    st.none() | st.integers(1, 5_000),
)
def test_fit_inside_stays_in_the_box_and_near_the_aspect(width, height, max_w, max_h):
    w, h = fit_inside(width, height, max_w, max_h)
    assert 1 <= w <= width and 1 <= h <= height
    assert max_w is None or w <= max_w
    assert max_h is None or h <= max_h
    if (w, h) != (width, height):
        # One side is on its bound; the other within rounding of the source's aspect.
        assert w == max_w or h == max_h
        assert abs(w * height - h * width) <= max(width, height)


# --- resolving what a caller gave ---------------------------------------------------------


def test_resolve_fills_from_the_defaults_per_format():
    defaults = OptionDefaults(format="webp", jpeg_quality=70, webp_quality=60, max_width=800)
    assert resolve_options({}, defaults) == OutputOptions("webp", 60, 800, None)
    assert resolve_options({"format": "jpeg"}, defaults) == OutputOptions("jpeg", 70, 800, None)
    assert resolve_options({"quality": 5, "max_height": 10}, defaults) == OutputOptions(
        "webp", 5, 800, 10
    )


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"quality": True}, "quality"),
        ({"quality": 96}, "quality"),
        ({"max_width": 0}, "max_width"),
        ({"format": "png"}, "format"),
        ({"size": 5}, "size"),
        ({"format": "avif", "max_height": 9000}, "max_height"),  # over AVIF's 8,704
    ],
)
def test_resolve_names_the_bad_field(given, field):
    with pytest.raises(OptionError) as caught:
        resolve_options(given, OptionDefaults())
    assert caught.value.field == field
    assert isinstance(caught.value, InputError)  # the caller's: a 422 (api/errors.py)


def test_options_survive_being_stored():
    options = OutputOptions("avif", 42, None, 640)
    assert OutputOptions.from_dict(options.as_dict()) == options


# --- formats ----------------------------------------------------------------------------


def _open(result) -> Image.Image:
    im = Image.open(io.BytesIO(result.data))
    im.load()
    return im


@pytest.mark.parametrize(("fmt", "pillow"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("avif", "AVIF")])
def test_each_format_decodes_to_the_picture(fmt, pillow):
    result = compress(images.jpeg_rgb(), OutputOptions(fmt, 60))
    out = _open(result)
    assert out.format == pillow
    assert out.size == (result.width, result.height) == (images.W, images.H)
    difference = ImageStat.Stat(ImageChops.difference(out.convert("RGB"), images.photo()))
    assert max(difference.mean) < 6  # the same picture, lossy
    assert not out.getexif()  # metadata dropped in every format
    assert "xmp" not in out.info


@pytest.mark.parametrize("fmt", ["webp", "avif"])
def test_exif_and_gps_are_dropped_and_the_image_turned_in_every_format(fmt):
    out = _open(compress(images.jpeg_exif_rotated(), OutputOptions(fmt, 60)))
    assert out.size == (images.H, images.W)  # displayed upright, not stored
    assert not out.getexif()
    assert "xmp" not in out.info


@pytest.mark.parametrize("fmt", ["webp", "avif"])
def test_lower_quality_gives_smaller_output_in_every_format(fmt):
    data = images.jpeg_rgb()
    sizes = [len(compress(data, OutputOptions(fmt, q)).data) for q in (20, 50, 90)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "avif"])
def test_greyscale_stays_grey(fmt):
    out = _open(compress(images.png_grey16(), OutputOptions(fmt, 80)))
    rgb = out.convert("RGB")
    red, green, blue = (ImageStat.Stat(band).mean[0] for band in rgb.split())
    assert abs(red - green) < 2 and abs(green - blue) < 2


def test_webp_keeps_an_rgb_profile():
    out = _open(compress(images.jpeg_with_icc(), OutputOptions("webp", 60)))
    assert (
        out.info.get("icc_profile")
        == Image.open(io.BytesIO(images.jpeg_with_icc())).info["icc_profile"]
    )


def test_a_side_over_the_formats_limit_is_refused_unless_fitted():
    wide = images.png_wide()  # over WebP's 16,383 pixels a side
    width = Image.open(io.BytesIO(wide)).width
    assert width > 16_383
    with pytest.raises(ImageRejected, match="WEBP can be at most 16383 pixels on a side"):
        compress(wide, OutputOptions("webp", 50))
    fitted = compress(wide, OutputOptions("webp", 50, max_width=4000))
    assert fitted.width == 4000


# --- resizing -------------------------------------------------------------------------------


def test_resize_fits_the_box_with_the_aspect_kept():
    result = compress(images.jpeg_rgb(), OutputOptions(max_width=320, max_height=320))
    assert (result.width, result.height) == (320, 240)
    out = _open(result)
    assert out.size == (320, 240)
    # The same picture, smaller: compare with a plain resize of the source.
    expected = images.photo().resize((320, 240), Image.Resampling.LANCZOS)
    difference = ImageStat.Stat(ImageChops.difference(out, expected))
    assert max(difference.mean) < 4


def test_a_source_smaller_than_the_box_is_not_enlarged():
    result = compress(images.jpeg_rgb(), OutputOptions(max_width=5000, max_height=5000))
    assert (result.width, result.height) == (images.W, images.H)


@pytest.mark.parametrize("orientation", [6, 8, 5, 3])
def test_the_box_applies_to_the_upright_image(orientation):
    # Stored sideways for 5-8: upright it is 640 wide, 480 high, red square top-left.
    result = compress(images.jpeg_oriented(orientation), OutputOptions(max_width=320))
    out = _open(result).convert("RGB")
    assert out.size == (320, 240)
    pixel = out.getpixel((8, 8))
    assert isinstance(pixel, tuple)  # an RGB image's pixel
    r, g, b = pixel
    assert r > 200 and g < 80 and b < 80, (orientation, (r, g, b))


def test_greyscale_and_transparent_sources_resize_too():
    grey = _open(compress(images.png_grey16(), OutputOptions(max_height=120)))
    assert grey.mode == "L" and grey.height == 120
    flat = _open(compress(images.png_rgba(), OutputOptions("webp", 60, max_width=100)))
    assert flat.width == 100 and flat.mode == "RGB"


def test_a_jpeg_is_decoded_at_reduced_scale_when_the_box_is_at_most_half(monkeypatch):
    drafts: list[tuple[int, int] | None] = []
    original = JpegImageFile.draft

    def spy(self, mode, size):
        drafts.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    big = images._save(images.photo((2400, 1800)), "JPEG", quality=90)
    small = compress(big, OutputOptions(max_width=600))  # a quarter: decoded at 1/4
    assert drafts == [(600, 450)]
    assert (small.width, small.height) == (600, 450)
    drafts.clear()
    compress(big, OutputOptions(max_width=1500))  # more than half: a full decode
    assert drafts == []
    # Drafted or not, the picture is the same.
    full = images.photo((2400, 1800)).resize((600, 450), Image.Resampling.LANCZOS)
    difference = ImageStat.Stat(ImageChops.difference(_open(small), full))
    assert max(difference.mean) < 4

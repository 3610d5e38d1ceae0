"""Unit tests of the per-image plan: the route, its memory estimate and the header checks."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.image_plan import (
    BUDGET_BYTES_PER_PIXEL,
    OUTPUT_SIDE_LIMITS,
    Header,
    default_memory_budget,
    jpeg_holds_all_coefficients,
    peak_bytes,
    refusal,
    route,
)
from pipeline.settings import Settings
from tests import imagefactory as images

MAX_PIXELS = Settings().max_pixels
BUDGET = default_memory_budget(MAX_PIXELS)
MB = 1_000_000


def header(mode: str = "RGBA", size: tuple[int, int] = (7070, 7070), **facts) -> Header:
    facts.setdefault("format", "PNG")
    return Header(mode=mode, width=size[0], height=size[1], input_bytes=212_468, **facts)


def check(h: Header, *, max_pixels: int = MAX_PIXELS, max_memory: int = BUDGET) -> str | None:
    return refusal(h, max_pixels=max_pixels, max_memory=max_memory)


# --- what is accepted at the defaults ------------------------------------------------


def test_default_budget_is_thirteen_bytes_per_pixel_of_max_pixels():
    assert BUDGET == BUDGET_BYTES_PER_PIXEL * MAX_PIXELS == 650 * MB


@pytest.mark.parametrize(
    "h",
    [
        header("RGBA"),  # the issue's 212 KB PNG
        header("RGBA", (10_000, 5_000)),
        header("LA"),
        header("P", transparency=True, palette_rgb=True),
        header("I;16"),
        header("RGB", format="JPEG", jpeg_sampling=((2, 2), (1, 1), (1, 1))),
        header("RGB", format="JPEG", orientation=6, jpeg_sampling=((2, 2), (1, 1), (1, 1))),
        header(
            "RGB",
            format="JPEG",
            jpeg_all_coefficients=True,  # progressive 4:2:0
            jpeg_sampling=((2, 2), (1, 1), (1, 1)),
        ),
        header("CMYK", format="JPEG", jpeg_sampling=((1, 1),) * 4),
    ],
    ids=lambda h: f"{h.mode} {h.format} orientation {h.orientation}",
)
def test_common_images_at_max_pixels_fit_the_default_budget(h):
    assert check(h) is None


@pytest.mark.parametrize(
    ("h", "phrase"),
    [
        (
            header("CMYK", format="JPEG", jpeg_all_coefficients=True, jpeg_sampling=((1, 1),) * 4),
            "7070x7070 progressive or multi-scan CMYK JPEG: converting it needs about 1000 MB",
        ),
        (header("RGBA", format="WEBP"), "7070x7070 RGBA WEBP: converting it needs about 1200 MB"),
        (header("RGBA", orientation=8), "RGBA PNG to be rotated: converting it needs about 800 MB"),
    ],
)
def test_heavier_routes_at_max_pixels_are_refused_naming_the_cost(h, phrase):
    reason = check(h)

    assert reason is not None
    assert phrase in reason
    assert reason.endswith("over the limit of 650 MB per image")


def test_budget_applies_to_the_estimate_inclusively():
    h = header("RGBA", (2000, 1500))
    needed = peak_bytes(h)

    assert check(h, max_memory=needed) is None
    assert "over the limit of" in (check(h, max_memory=needed - 1) or "")


# --- what the estimate counts ---------------------------------------------------------


def test_estimate_counts_every_copy_of_the_rgba_route():
    h = header("RGBA", (1600, 1200))
    pixels = 1600 * 1200
    coefficients = (1600 // 16) * (1200 // 16) * 6 * 64 * 2  # 4:2:0 MCUs, 2 bytes each

    # RGBA decoded, RGB flattened, the JPEG encoder's coefficients and output buffer.
    assert peak_bytes(h) == 4 * pixels + 4 * pixels + coefficients + pixels


def test_rotation_costs_one_more_output_image():
    upright = header("I;16", (1000, 800))
    turned = header("I;16", (1000, 800), orientation=6)

    # The transform turns the converted (8-bit grey) image, not the 16-bit one.
    assert peak_bytes(turned) - peak_bytes(upright) == 1000 * 800


def test_progressive_jpeg_counts_its_coefficients_by_sampling():
    def cost(sampling, all_coefficients):
        h = header(
            "RGB",
            (1600, 1200),
            format="JPEG",
            jpeg_sampling=sampling,
            jpeg_all_coefficients=all_coefficients,
        )
        return peak_bytes(h)

    pixels = 1600 * 1200
    subsampled = ((2, 2), (1, 1), (1, 1))
    full = ((1, 1),) * 3
    assert cost(subsampled, True) - cost(subsampled, False) == 3 * pixels  # 2 bytes x 1.5
    assert cost(full, True) - cost(full, False) == 6 * pixels
    assert cost(full, False) == cost(subsampled, False)  # one pass: no coefficient store


def test_thin_images_count_whole_jpeg_blocks():
    # A 1-pixel-high row is encoded as 16-pixel-high MCUs: 16 times the pixels.
    h = header("RGB", (65_000, 1))

    assert peak_bytes(h) > 16 * 3 * 65_000


def test_tiff_counts_a_strip_of_the_whole_image_raw():
    plain = header("RGBA", (1000, 1000))
    tiff = header("RGBA", (1000, 1000), format="TIFF", stored_bits_per_pixel=64)

    assert peak_bytes(tiff) - peak_bytes(plain) == 8 * 1000 * 1000 + 212_468


# --- routes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "facts", "name", "output_mode"),
    [
        ("RGB", {}, "as is", "RGB"),
        ("L", {}, "as is", "L"),
        ("RGBA", {}, "flatten RGBA", "RGB"),
        ("LA", {}, "flatten LA", "L"),
        ("P", {"transparency": True, "palette_rgb": True}, "flatten palette", "RGB"),
        ("P", {"transparency": True}, "flatten via RGBA", "RGB"),
        ("L", {"transparency": True}, "flatten via RGBA", "L"),
        ("RGB", {"transparency": True}, "flatten via RGBA", "RGB"),
        ("RGBa", {}, "flatten via RGBA", "RGB"),
        ("CMYK", {}, "CMYK to RGB", "RGB"),
        ("1", {}, "bilevel to grey", "L"),
        ("I;16", {}, "16-bit grey to 8", "L"),
        ("I;16B", {}, "16-bit grey to 8", "L"),
        ("F", {}, "wide grey to 8", "L"),
        ("P", {"palette_rgb": True}, "to RGB", "RGB"),
        ("YCbCr", {}, "to RGB", "RGB"),
    ],
)
def test_route_by_mode(mode, facts, name, output_mode):
    chosen = route(header(mode, **facts))

    assert (chosen.name, chosen.output_mode) == (name, output_mode)


# --- the other header checks ------------------------------------------------------------


def test_pixel_limit_comes_first_and_reads_as_before():
    reason = check(header("RGB", (9000, 9000)))

    assert reason == "image is 9000x9000 = 81000000 pixels, over the limit of 50000000"


@pytest.mark.parametrize(("fmt", "limit"), OUTPUT_SIDE_LIMITS.items())
def test_side_limit_of_each_output_format(fmt, limit):
    def check_side(width):
        return refusal(
            header("L", (width, 1)), max_pixels=MAX_PIXELS, max_memory=10**12, output_format=fmt
        )

    assert check_side(limit) is None
    reason = check_side(limit + 1)
    assert reason == (
        f"image is {limit + 1}x1: a {fmt} can be at most {limit} pixels on a side; "
        "set max_width and max_height to fit it"
    )


def test_the_issues_wide_png_is_refused_for_its_side_not_decoded():
    # 49.9M x 1 is under MAX_PIXELS; decoding it only to fail in the encoder took 500 MB.
    reason = check(header("RGB", (49_900_000, 1)))

    assert reason == (
        "image is 49900000x1: a JPEG can be at most 65500 pixels on a side; "
        "set max_width and max_height to fit it"
    )


# --- the setting ------------------------------------------------------------------------


def test_max_image_memory_setting():
    assert Settings.from_env({}).max_image_memory == 0  # derived from MAX_PIXELS
    assert Settings.from_env({"MAX_IMAGE_MEMORY": "300000000"}).max_image_memory == 300 * MB
    with pytest.raises(ConfigError, match="MAX_IMAGE_MEMORY"):
        Settings.from_env({"MAX_IMAGE_MEMORY": "-1"})


# --- which JPEGs hold every coefficient while decoding ----------------------------------


def test_baseline_jpegs_decode_in_one_pass():
    for data in (images.jpeg_rgb(), images.jpeg_grey(), images.jpeg_cmyk_icc()):
        assert not jpeg_holds_all_coefficients(data)


def test_progressive_jpeg_holds_all_coefficients():
    assert jpeg_holds_all_coefficients(images.jpeg_progressive())


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body


FRAME_OF_THREE = _segment(
    0xC0, bytes([8, 0, 16, 0, 16, 3]) + bytes([1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])
)


def test_sequential_jpeg_with_a_scan_per_component_holds_all_coefficients():
    # libjpeg buffers the whole image when the first scan lacks a component.
    one_component_scan = _segment(0xDA, bytes([1, 1, 0, 0, 63, 0]))
    all_components_scan = _segment(0xDA, bytes([3, 1, 0, 2, 0x11, 3, 0x11, 0, 63, 0]))

    assert jpeg_holds_all_coefficients(b"\xff\xd8" + FRAME_OF_THREE + one_component_scan)
    assert not jpeg_holds_all_coefficients(b"\xff\xd8" + FRAME_OF_THREE + all_components_scan)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8",  # nothing after the start
        b"\xff\xd8" + FRAME_OF_THREE,  # no scan
        b"\xff\xd8" + FRAME_OF_THREE + b"\xff\xda\x00",  # a cut-off scan header
        b"\xff\xd8" + _segment(0xDA, bytes([3])),  # a scan before any frame
        b"\xff\xd8\x00\x00\x00\x00",  # not a marker
    ],
)
def test_unreadable_jpeg_markers_count_as_the_costly_case(data):
    assert jpeg_holds_all_coefficients(data)

"""A request's output options: format, quality and the box outputs fit inside.

Pure values and pure checks, shared by every way in (the upload form, the CLI,
`batch.run_csv`) so an option is judged the same everywhere. Options are
resolved against the server's defaults once, when the request is accepted, and
stored with it: a request resumed after a restart, or by another process, comes
out as it was asked, whatever the defaults are by then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import OptionError as OptionError  # also importable from here
from pipeline.image_plan import OUTPUT_SIDE_LIMITS

FORMATS = ("jpeg", "webp", "avif")
EXTENSIONS = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}
CONTENT_TYPES = {"jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}
# The largest side each format can hold (image_plan says why).
MAX_SIDE = {name: OUTPUT_SIDE_LIMITS[name.upper()] for name in FORMATS}
MIN_QUALITY, MAX_QUALITY = 1, 95
# The defaults' one home (Settings and the value objects read them). WebP's and
# AVIF's give JPEG 50's mean luma SSIM on the bench corpus (python -m
# tests.bench.calibrate, 200 images: WebP q56 76.1% of JPEG's bytes, AVIF q50 at
# speed 8 67.6%).
DEFAULT_FORMAT = "jpeg"
DEFAULT_QUALITY = {"jpeg": 50, "webp": 56, "avif": 50}
# Names a caller may use, in the order the help lists them.
FIELDS = ("format", "quality", "max_width", "max_height")


@dataclass(frozen=True, slots=True)
class OptionDefaults:
    """The server's defaults (Settings builds them from its environment; the values
    here are the defaults' one home, Settings reads them): a quality per format,
    since the same number means a different size and look in each."""

    format: str = DEFAULT_FORMAT
    jpeg_quality: int = DEFAULT_QUALITY["jpeg"]
    webp_quality: int = DEFAULT_QUALITY["webp"]
    avif_quality: int = DEFAULT_QUALITY["avif"]
    max_width: int | None = None
    max_height: int | None = None

    def quality_for(self, fmt: str) -> int:
        return {"jpeg": self.jpeg_quality, "webp": self.webp_quality, "avif": self.avif_quality}[
            fmt
        ]

    def resolve(self) -> OutputOptions:
        return resolve_options({}, self)


@dataclass(frozen=True, slots=True)
class OutputOptions:
    """How every image of one request comes out.

    `max_width`/`max_height`: the output fits inside that box with its aspect
    ratio kept, and is never enlarged; None leaves that side free.
    """

    format: str = DEFAULT_FORMAT
    quality: int = DEFAULT_QUALITY[DEFAULT_FORMAT]
    max_width: int | None = None
    max_height: int | None = None

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> OutputOptions:
        """As stored with a request (written by `as_dict`)."""
        return cls(
            format=str(stored["format"]),
            quality=int(stored["quality"]),
            max_width=_optional_int(stored.get("max_width")),
            max_height=_optional_int(stored.get("max_height")),
        )


# The options of a request that chose none, on a server with no defaults set.
DEFAULT_OPTIONS = OutputOptions()


def resolve_options(given: Mapping[str, Any], defaults: OptionDefaults) -> OutputOptions:
    """The caller's options (strings from a form, or typed values), checked and
    completed from `defaults`. Raises OptionError naming the first bad field.

    A quality given without a format applies to the default format; a format
    given without a quality takes that format's default quality.
    """
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise OptionError(unknown[0], f"not an option; the options are {', '.join(FIELDS)}")
    fmt = _format(given.get("format"), defaults.format)
    quality = _number(given, "quality", MIN_QUALITY, MAX_QUALITY)
    box = {name: _number(given, name, 1, MAX_SIDE[fmt]) for name in ("max_width", "max_height")}
    return OutputOptions(
        format=fmt,
        quality=defaults.quality_for(fmt) if quality is None else quality,
        max_width=defaults.max_width if box["max_width"] is None else box["max_width"],
        max_height=defaults.max_height if box["max_height"] is None else box["max_height"],
    )


def check_defaults(defaults: OptionDefaults) -> None:
    """The server's own defaults, checked as a caller's would be (raises OptionError)."""
    resolve_options(
        {
            "format": defaults.format,
            "max_width": defaults.max_width,
            "max_height": defaults.max_height,
        },
        defaults,
    )
    for fmt in FORMATS:
        quality = defaults.quality_for(fmt)
        if not MIN_QUALITY <= quality <= MAX_QUALITY:
            raise OptionError(
                f"{fmt}_quality", f"must be {MIN_QUALITY}-{MAX_QUALITY}, got {quality}"
            )


def fit_inside(
    width: int, height: int, max_width: int | None, max_height: int | None
) -> tuple[int, int]:
    """The size of a `width` x `height` image fitted inside the box, never enlarged.

    Each side is rounded to the nearest pixel and kept at least 1, so a very long
    thin image stays visible.
    """
    scale = 1.0
    if max_width is not None and width > max_width:
        scale = max_width / width
    if max_height is not None and height * scale > max_height:
        scale = max_height / height
    if scale >= 1.0:
        return width, height
    fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Rounding must not push a side past its bound (e.g. 1001 x 3 into 500 wide).
    return (
        min(fitted[0], max_width) if max_width is not None else fitted[0],
        min(fitted[1], max_height) if max_height is not None else fitted[1],
    )


def _format(value: Any, default: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    name = str(value).strip().lower()
    name = "jpeg" if name == "jpg" else name
    if name not in FORMATS:
        raise OptionError("format", f"must be one of {', '.join(FORMATS)}, got {value!r}")
    return name


def _number(given: Mapping[str, Any], field: str, low: int, high: int) -> int | None:
    value = given.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):  # True is an int to Python, not a size to anyone
        raise OptionError(field, f"must be a whole number {low}-{high}, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not text.isascii() or not text.isdigit() or len(text) > 9:
            raise OptionError(field, f"must be a whole number {low}-{high}, got {value!r}")
        number = int(text)
    if not low <= number <= high:
        raise OptionError(field, f"must be {low}-{high}, got {number}")
    return number


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)

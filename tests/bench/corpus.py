"""A deterministic corpus of real photographs at e-commerce sizes.

Sources are the sample photos bundled in the scikit-image wheel. Each corpus
image is a mosaic of random crops of them (so detail stays photographic at
4 MP instead of upscaled blur), 0.25 to 4 megapixels, mostly JPEG, some PNG,
some greyscale. `build_csv` writes the CSVs of their URLs that the legs upload.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tests.bench.imagehost import ImageHost

COLOUR = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
]
GREY = ["camera.png", "brick.png", "grass.png", "gravel.png", "moon.png", "coins.png"]
ASPECTS = [(1, 1), (4, 3), (3, 4), (3, 2), (2, 3)]


@dataclass(frozen=True)
class CorpusImage:
    name: str  # file name, its extension says the format
    data: bytes
    megapixels: float
    content_type: str


def _sources(names: list[str]) -> list[Image.Image]:
    import skimage  # only the benchmark needs it (the `bench` extra)

    folder = Path(skimage.__file__).parent / "data"
    return [Image.open(folder / n).convert("L" if n in GREY else "RGB") for n in names]


def _mosaic(sources: list[Image.Image], size: tuple[int, int], rng: random.Random) -> Image.Image:
    width, height = size
    cells = max(
        1, math.ceil(math.sqrt(width * height / 300_000))
    )  # ~0.3 MP per cell, like the sources
    cw, ch = math.ceil(width / cells), math.ceil(height / cells)
    out = Image.new(sources[0].mode, size)
    for gy in range(cells):
        for gx in range(cells):
            src = rng.choice(sources)
            scale = max(cw / src.width, ch / src.height) * rng.uniform(1.0, 1.4)
            tile = src.resize(
                (math.ceil(src.width * scale), math.ceil(src.height * scale)),
                Image.Resampling.BICUBIC,
            )
            x, y = rng.randrange(tile.width - cw + 1), rng.randrange(tile.height - ch + 1)
            out.paste(tile.crop((x, y, x + cw, y + ch)), (gx * cw, gy * ch))
    return out


def build(count: int = 120, seed: int = 20261123) -> list[CorpusImage]:
    rng = random.Random(seed)
    colour, grey = _sources(COLOUR), _sources(GREY)
    images = []
    for i in range(count):
        megapixels = math.exp(rng.uniform(math.log(0.25), math.log(4.0)))
        aw, ah = rng.choice(ASPECTS)
        height = int(math.sqrt(megapixels * 1e6 * ah / aw))
        width = int(height * aw / ah)
        kind = rng.random()
        image = _mosaic(grey if kind > 0.9 else colour, (width, height), rng)
        buf = io.BytesIO()
        if 0.8 < kind <= 0.9:
            image.save(buf, "PNG", compress_level=6)
            name, ctype = f"{i:04d}.png", "image/png"
        else:
            image.save(buf, "JPEG", quality=90)
            name, ctype = f"{i:04d}.jpg", "image/jpeg"
        images.append(CorpusImage(name, buf.getvalue(), width * height / 1e6, ctype))
    return images


def load_or_build(cache: Path, count: int = 120) -> list[CorpusImage]:
    """Building takes a few seconds; keep it between runs."""
    cache.mkdir(parents=True, exist_ok=True)
    marker = cache / f"corpus-{count}.done"
    if not marker.exists():
        for image in build(count):
            (cache / image.name).write_bytes(image.data)
        marker.touch()
    out = []
    for path in sorted(p for p in cache.iterdir() if p.suffix in (".jpg", ".png")):
        with Image.open(path) as im:
            megapixels = im.width * im.height / 1e6
        ctype = "image/png" if path.suffix == ".png" else "image/jpeg"
        out.append(CorpusImage(path.name, path.read_bytes(), megapixels, ctype))
    return out[:count]


def build_csv(host: ImageHost, images: list[CorpusImage], n: int) -> tuple[bytes, float]:
    """N image URLs over products of 1-4 images; returns the CSV and its total megapixels."""
    lines, i, row, megapixels = ["S. No.,Product Name,Input Image Urls"], 0, 0, 0.0
    while i < n:
        count = min(1 + row % 4, n - i)
        urls = []
        for j in range(i, i + count):
            image = images[j % len(images)]
            urls.append(host.url(j, image.name))
            megapixels += image.megapixels
        row += 1
        lines.append(f'{row},Product {row},"{",".join(urls)}"')
        i += count
    return ("\n".join(lines) + "\n").encode(), megapixels

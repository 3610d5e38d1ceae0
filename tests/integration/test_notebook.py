"""notebooks/batch.ipynb runs top to bottom on a CSV of a few hundred images from loopback."""

from __future__ import annotations

import base64
import csv
import io

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from tests import imagefactory as images
from tests.integration.service import ROOT

pytestmark = pytest.mark.integration
NOTEBOOK = ROOT / "notebooks" / "batch.ipynb"


def test_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def photos() -> list[bytes]:
    """A dozen distinct inputs (sizes, seeds, JPEG qualities, PNG), so sizes spread."""
    made = []
    for n, size in enumerate([(320, 240), (480, 360), (240, 320)] * 4):
        im = images.photo(size, seed=n + 1)
        out = io.BytesIO()
        if n % 4 == 3:
            im.save(out, "PNG")
        else:
            im.save(out, "JPEG", quality=(95, 85, 75)[n % 3])
        made.append(out.getvalue())
    return made


def catalogue(image_server, products: int) -> tuple[str, int]:
    """A CSV of `products` rows of two images each, every URL distinct, about one in
    twelve failing (missing, or not an image); and how many images fail."""
    bodies = photos()
    lines, failed = ["S. No.,Product Name,Input Image Urls"], 0
    for n in range(products):
        urls = []
        for position in range(2):
            path = f"/p{n}-{position}"
            if (n * 2 + position) % 24 == 5:
                urls.append(image_server.url(f"{path}-missing.jpg"))
                failed += 1
            elif (n * 2 + position) % 24 == 17:
                urls.append(image_server.add(f"{path}.jpg", images.not_an_image()))
                failed += 1
            else:
                body = bodies[(n * 2 + position) % len(bodies)]
                urls.append(image_server.add(f"{path}.img", body, content_type="image/jpeg"))
        lines.append(f'{n + 1},Product {n + 1},"{",".join(urls)}"')
    return "\n".join(lines) + "\n", failed


def test_notebook_runs_a_batch(tmp_path, image_server, monkeypatch):
    products = 150  # 300 images: the charts must not grow with them
    text, failed = catalogue(image_server, products)
    source = tmp_path / "products.csv"
    source.write_text(text)
    total = 2 * products
    # The kernel inherits this environment: the notebook reads settings like the API does.
    for name, value in {
        "IMAGEPIPE_CSV": str(source),
        "IMAGEPIPE_OUTPUT": str(tmp_path / "output.csv"),
        "IMAGEPIPE_OUTPUT_DIR": str(tmp_path / "export"),
        "DATA_DIR": str(tmp_path / "data"),
        "ALLOW_PRIVATE_NETWORKS": "1",
        "DASK_WORKERS": "1",
        "DASK_DASHBOARD_ADDRESS": "127.0.0.1:0",
    }.items():
        monkeypatch.setenv(name, value)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert not [o for o in outputs if o.output_type == "error"]
    assert "Dashboard: http://127.0.0.1:" in text
    assert f"completed_with_errors: {total - failed}/{total} done, {failed} failed" in text
    assert "written:" in text and "links: http://localhost:5000/media/requests/" in text
    rich = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    tables = [o["data"]["text/html"] for o in rich if "text/html" in o.get("data", {})]
    results = next(t for t in tables if "saved_pct" in t)  # the results table
    assert "<th>line</th>" in results and "<th>row</th>" not in results
    assert any("download failed: HTTP 404" in t and "<th>images</th>" in t for t in tables)
    assert any("download failed: HTTP 404" in t and "<th>error</th>" in t for t in tables)
    # tqdm's progress bar: a Jupyter widget (ipywidgets installed) with a text fallback
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in rich)
    pictures = [
        Image.open(io.BytesIO(base64.b64decode(o["data"]["image/png"])))
        for o in rich
        if "image/png" in o.get("data", {})
    ]
    assert len(pictures) == 2 + 4  # the two charts and four before/after pairs
    charts = [p for p in pictures if p.width > 600]  # the pairs are 520 wide at most
    assert len(charts) == 2
    for chart in charts:  # fixed sizes: as readable at 300 images as at 10,000
        assert chart.width < 1200 and chart.height < 500, chart.size

    rows = list(csv.reader((tmp_path / "output.csv").open(encoding="utf-8")))
    assert len(rows) == 1 + products and rows[3][3].endswith(",")  # line 4 lost its second
    exported = list(csv.DictReader((tmp_path / "export" / "output.csv").open(encoding="utf-8")))
    first = exported[0]["Output Image Urls"].split(",")[0]
    assert first == "images/0000000-000.jpg"
    with Image.open(tmp_path / "export" / first) as im:
        assert im.format == "JPEG"
    failures = list(csv.DictReader((tmp_path / "export" / "failures.csv").open(encoding="utf-8")))
    assert len(failures) == failed and failures[0]["Line"] == "4"

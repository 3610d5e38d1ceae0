"""notebooks/batch.ipynb runs top to bottom on a small CSV served from loopback."""

from __future__ import annotations

import csv

import nbformat
import pytest
from nbclient import NotebookClient

from tests import imagefactory as images
from tests.integration.service import ROOT

pytestmark = pytest.mark.integration
NOTEBOOK = ROOT / "notebooks" / "batch.ipynb"


def test_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_notebook_runs_a_batch(tmp_path, image_server, monkeypatch):
    good = [
        image_server.add("/a.jpg", images.jpeg_rgb(), content_type="image/jpeg"),
        image_server.add("/b.png", images.png_rgba(), content_type="image/png"),
        image_server.add("/c.jpg", images.jpeg_exif_rotated(), content_type="image/jpeg"),
    ]
    missing = image_server.url("/gone.jpg")
    source = tmp_path / "products.csv"
    source.write_text(
        "S. No.,Product Name,Input Image Urls\n"
        f'1,Lamp,"{good[0]},{good[1]}"\n'
        f'2,Vase,"{good[2]},{missing}"\n'
    )
    # The kernel inherits this environment: the notebook reads settings like the API does.
    for name, value in {
        "IMAGEPIPE_CSV": str(source),
        "IMAGEPIPE_OUTPUT": str(tmp_path / "output.csv"),
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
    assert "completed_with_errors: 3/4 done, 1 failed" in text
    assert "written:" in text
    rich = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    tables = [o for o in rich if "text/html" in o.get("data", {})]
    assert any("saved_pct" in o["data"]["text/html"] for o in tables)  # the results table
    assert any("download failed: HTTP 404" in o["data"]["text/html"] for o in tables)  # failures
    # tqdm's progress bar: a Jupyter widget (ipywidgets installed) with a text fallback
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in rich)
    pictures = [o for o in rich if "image/png" in o.get("data", {})]
    assert len(pictures) >= 1 + 3  # the chart and three before/after pairs
    rows = list(csv.reader((tmp_path / "output.csv").open()))
    assert len(rows) == 3 and rows[2][3].endswith(",")  # the missing image's slot is empty

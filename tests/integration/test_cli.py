"""`python -m pipeline run` as a script would use it: exit codes and the output CSV."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from tests import imagefactory as images
from tests.integration.service import ROOT

pytestmark = pytest.mark.integration


def run_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "ALLOW_PRIVATE_NETWORKS": "1",
        "DASK_WORKERS": "1",
        "DASK_DASHBOARD_ADDRESS": "",
    }
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_run_writes_output_csv_and_exit_code_says_some_failed(tmp_path, image_server):
    good = image_server.add("/a.jpg", images.jpeg_rgb(), content_type="image/jpeg")
    missing = image_server.url("/gone.jpg")
    source = tmp_path / "products.csv"
    source.write_text(f'S. No.,Product Name,Input Image Urls\n1,Lamp,"{good},{missing}"\n')
    result = run_cli(tmp_path, str(source), "--no-progress", "-o", str(tmp_path / "out.csv"))
    assert result.returncode == 1, result.stderr
    assert "completed_with_errors: 1/2 images done, 1 failed" in result.stdout
    assert f"failed: line 1 {missing}: download failed: HTTP 404" in result.stderr
    rows = list(csv.reader((tmp_path / "out.csv").open()))
    assert rows[0][-1] == "Output Image Urls"
    first, second = rows[1][3].split(",")
    assert first.endswith("/images/0000000-000.jpg") and second == ""


def test_all_good_exits_zero_with_default_output_path(tmp_path, image_server):
    url = image_server.add("/a.png", images.png_rgba(), content_type="image/png")
    source = tmp_path / "products.csv"
    source.write_text(f"S. No.,Product Name,Input Image Urls\n1,Lamp,{url}\n")
    result = run_cli(tmp_path, str(source), "--no-progress", "--quality", "70")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "products.output.csv").is_file()


@pytest.mark.parametrize(
    ("content", "args", "code", "needle"),
    [
        ("S. No.,Product Name\n1,Lamp\n", [], 2, "invalid CSV"),
        (None, [], 2, "no such file"),
        (
            "S. No.,Product Name,Input Image Urls\n1,Lamp,https://x.example/a.jpg\n",
            ["--quality", "0"],
            4,
            "JPEG_QUALITY",
        ),
    ],
)
def test_bad_input_exit_codes(tmp_path, content, args, code, needle):
    source = tmp_path / "products.csv"
    if content is not None:
        source.write_text(content)
    result = run_cli(tmp_path, str(source), "--no-progress", *args)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert needle in result.stderr

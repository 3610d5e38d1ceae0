"""`python -m pipeline run` as a script would use it: exit codes and the output CSV."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

import pytest

from pipeline import cli
from pipeline.models import FINAL_STATUSES
from pipeline.records import SqliteRecordStore
from pipeline.settings import Settings
from tests import imagefactory as images
from tests.integration.service import ROOT

pytestmark = pytest.mark.integration


def cli_env(tmp_path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "ALLOW_PRIVATE_NETWORKS": "1",
        "DASK_WORKERS": "1",
        "DASK_DASHBOARD_ADDRESS": "",
        **extra,
    }


def run_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "run", *args],
        cwd=ROOT,
        env=cli_env(tmp_path),
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
            2,
            "invalid option --quality: must be 1-95, got 0",
        ),
        (
            "S. No.,Product Name,Input Image Urls\n1,Lamp,https://x.example/a.jpg\n",
            ["--format", "gif"],
            2,
            "invalid option --format: must be one of jpeg, webp, avif",
        ),
        (
            "S. No.,Product Name,Input Image Urls\n1,Lamp,https://x.example/a.jpg\n",
            ["--max-width", "wide"],
            2,
            "invalid option --max-width: must be a whole number",
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


def test_options_choose_the_format_and_the_box(tmp_path, image_server):
    url = image_server.add("/a.jpg", images.jpeg_rgb(), content_type="image/jpeg")
    source = tmp_path / "products.csv"
    source.write_text(f"S. No.,Product Name,Input Image Urls\n1,Lamp,{url}\n")
    result = run_cli(
        tmp_path, str(source), "--no-progress", "--format", "webp", "--max-width", "200"
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader((tmp_path / "products.output.csv").open()))
    assert rows[1][3].endswith("/images/0000000-000.webp")
    store = SqliteRecordStore(Settings(data_dir=tmp_path / "data").sqlite_path)
    try:
        [record], _ = store.list_requests()
        [image] = list(store.iter_images(record.request_id))
    finally:
        store.close()
    assert (record.options.format, record.options.max_width) == ("webp", 200)
    assert record.options.quality == Settings().webp_quality
    assert (image.width, image.height) == (200, 150)
    stored = tmp_path / "data" / "objects" / image.output_key
    assert stored.read_bytes()[8:12] == b"WEBP"


def test_every_final_status_has_its_documented_exit_code():
    assert set(cli.EXIT) == FINAL_STATUSES
    assert len(set(cli.EXIT.values())) == len(cli.EXIT)  # a script can tell them apart
    for status, code in cli.EXIT.items():
        assert f"  {code}  " in cli.__doc__, status
    assert "  5  the request was cancelled" in cli.__doc__


def test_a_run_cancelled_elsewhere_exits_5(tmp_path, image_server):
    # Slow images, one per batch: the run is far from done when the cancel arrives.
    urls = [
        image_server.add(f"/{n}.jpg", images.jpeg_rgb(), content_type="image/jpeg", delay=1.0)
        for n in range(12)
    ]
    source = tmp_path / "products.csv"
    source.write_text(
        "S. No.,Product Name,Input Image Urls\n"
        + "".join(f"{n},Lamp {n},{url}\n" for n, url in enumerate(urls))
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(source), "--no-progress"],
        cwd=ROOT,
        env=cli_env(tmp_path, BATCH_SIZE="1", DASK_THREADS_PER_WORKER="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        cancelled = cancel_once_recorded(Settings(data_dir=tmp_path / "data"), run)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert cancelled, (run.returncode, stdout, stderr)
    assert run.returncode == 5, (stdout, stderr)
    assert "the request was cancelled" in stderr
    assert stdout.startswith("cancelled: ") and " cancelled" in stdout.split(";")[0]
    assert sum(image_server.hits.values()) < len(urls)  # nothing new started


def cancel_once_recorded(settings: Settings, run: subprocess.Popen) -> bool:
    """What another process sharing the records (the API, say) does to cancel the run."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:
        if settings.sqlite_path.exists():
            store = SqliteRecordStore(settings.sqlite_path)
            try:
                records, _ = store.list_requests(limit=1)
                if records:
                    return store.request_cancel(records[0].request_id, records[0].created_at)
            finally:
                store.close()
        time.sleep(0.2)
    return False

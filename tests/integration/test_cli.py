"""`python -m pipeline run` as a script would use it: exit codes, the output CSV,
--output-dir's folder, and products named by the line of the file."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import boto3
import pytest
from PIL import Image

from pipeline import cli
from pipeline.batch import describe_outputs
from pipeline.models import FINAL_STATUSES
from pipeline.records.sqlite import SqliteRecordStore
from pipeline.service import Services, open_storage
from pipeline.settings import Settings
from tests import imagefactory as images
from tests.integration.flows import products_csv, slow_images
from tests.integration.service import ROOT, run_pipeline

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


def run_cli(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run_pipeline(*args, env=cli_env(tmp_path, **env))


@pytest.fixture
def refusal(tmp_path, monkeypatch, capsys):
    """`python -m pipeline run ARGS` in this process, for what is refused before a cluster
    starts (a new interpreter would add only its start-up; the process's own exit codes
    are the other tests'): (exit code, stderr), and nothing was stored."""
    for name, value in cli_env(tmp_path).items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str]:
        try:
            code = cli.main(["run", *args])
        except SystemExit as exc:  # argparse's own refusals
            assert isinstance(exc.code, int), exc.code
            code = exc.code
        stderr = capsys.readouterr().err
        assert not (tmp_path / "data").exists(), "something was stored"
        return code, stderr

    return run


def test_run_writes_output_csv_and_exit_code_says_some_failed(tmp_path, image_server):
    good = image_server.add("/a.jpg", images.jpeg_rgb(), content_type="image/jpeg")
    missing = image_server.url("/gone.jpg")
    source = tmp_path / "products.csv"
    source.write_text(f'S. No.,Product Name,Input Image Urls\n1,Lamp,"{good},{missing}"\n')
    result = run_cli(tmp_path, str(source), "--no-progress", "-o", str(tmp_path / "out.csv"))
    assert result.returncode == 1, result.stderr
    summary, *told = result.stdout.splitlines()
    assert summary.startswith("completed_with_errors: 1/2 images done, 1 failed; output CSV ")
    assert f"failed: line 2 {missing}: download failed: HTTP 404" in result.stderr
    rows = list(csv.reader((tmp_path / "out.csv").open()))
    assert rows[0][-1] == "Output Image Urls"
    first, second = rows[1][3].split(",")
    assert first.endswith("/images/0000000-000.jpg") and second == ""
    failures = list(csv.reader((tmp_path / "out.failures.csv").open()))
    assert failures == [
        ["Line", "S. No.", "Product Name", "Input Image Url", "Reason"],
        ["2", "1", "Lamp", missing, failures[1][4]],
    ]
    assert failures[1][4].startswith("download failed: HTTP 404")
    # Where the outputs are: the links point at the API's /media, so it must run.
    found = re.search(r"/requests/([0-9a-f]{32})/images/", first)
    assert found, first
    request_id = found[1]
    objects = (tmp_path / "data" / "objects").resolve()
    assert f"failures: {tmp_path / 'out.failures.csv'}" in told
    assert f"images: stored in {objects}/requests/{request_id}/images/" in told
    links = next(line for line in told if line.startswith("links: "))
    assert f"http://localhost:5000/media/requests/{request_id}/images/" in links
    assert "served by the API (`make run`) while it runs" in links
    assert any("--output-dir" in line for line in told)


def test_every_image_failed_exits_3_with_the_common_reason(tmp_path, image_server):
    gone = [image_server.url(f"/gone{n}.jpg") for n in range(2)]
    source = tmp_path / "products.csv"
    source.write_text(f'S. No.,Product Name,Input Image Urls\n1,Lamp,"{gone[0]},{gone[1]}"\n')
    result = run_cli(tmp_path, str(source), "--no-progress")
    assert result.returncode == 3, (result.stdout, result.stderr)
    summary, *told = result.stdout.splitlines()
    assert summary.startswith("failed: 0/2 images done, 2 failed; ")
    assert any(
        line.startswith("error: all 2 images failed; the most common reason") for line in told
    )
    assert not any(line.startswith("links: ") for line in told)  # nothing to link to
    assert (tmp_path / "products.output.failures.csv").is_file()


def csv_naming_lines(image_server) -> tuple[str, dict[str, str]]:
    """A CSV whose products' lines are not their rows + 2: a blank line, and a name
    quoted over two lines. One URL repeats; two are missing."""
    urls = {
        "a": image_server.add("/a.jpg", images.jpeg_rgb(), content_type="image/jpeg"),
        "b": image_server.add("/b.png", images.png_rgba(), content_type="image/png"),
        "gone1": image_server.url("/gone1.jpg"),
        "gone2": image_server.url("/gone2.jpg"),
    }
    text = (
        "S. No.,Product Name,Input Image Urls\n"  # line 1
        f"1,Lamp,{urls['a']}\n"  # line 2
        "\n"  # line 3
        f'2,"Vase\ntall","{urls["b"]},{urls["gone1"]}"\n'  # lines 4-5
        f'3,Chair,"{urls["a"]},{urls["gone2"]}"\n'  # line 6
    )
    return text, urls


def assert_exported(directory: Path, urls: dict[str, str], extension: str) -> None:
    """DIR/output.csv links to DIR/images/ by relative paths, each an image that opens."""
    rows = list(csv.DictReader((directory / "output.csv").open(encoding="utf-8")))
    assert [r["Product Name"] for r in rows] == ["Lamp", "Vase tall", "Chair"]
    links = [r["Output Image Urls"].split(",") for r in rows]
    first, second = f"images/0000000-000.{extension}", f"images/0000001-000.{extension}"
    assert links == [[first], [second, ""], [first, ""]]  # the repeated URL shares its file
    files = sorted(p.name for p in (directory / "images").iterdir())
    assert files == [Path(first).name, Path(second).name]
    for link in (first, second):
        with Image.open(directory / link) as im:
            im.load()
            assert im.format == {"webp": "WEBP", "jpg": "JPEG"}[extension]
    failures = list(csv.DictReader((directory / "failures.csv").open(encoding="utf-8")))
    assert [(f["Line"], f["Product Name"], f["Input Image Url"]) for f in failures] == [
        ("4", "Vase tall", urls["gone1"]),
        ("6", "Chair", urls["gone2"]),
    ]


def test_output_dir_holds_the_images_and_a_csv_linking_to_them(tmp_path, image_server):
    text, urls = csv_naming_lines(image_server)
    source = tmp_path / "products.csv"
    source.write_text(text)
    out = tmp_path / "run" / "outputs"
    result = run_cli(
        tmp_path, str(source), "--no-progress", "--format", "webp", "--output-dir", str(out)
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith(
        f"completed_with_errors: 3/5 images done, 2 failed; outputs in {out}: output.csv and "
        "2 images under images/"
    ), result.stdout
    # Products are named by the line of the file, as the API names them.
    assert f"failed: line 4 {urls['gone1']}: download failed: HTTP 404" in result.stderr
    assert f"failed: line 6 {urls['gone2']}: download failed: HTTP 404" in result.stderr
    assert not (tmp_path / "products.output.csv").exists()
    # The folder stands alone: moved elsewhere, its links still resolve.
    moved = shutil.move(out, tmp_path / "moved")
    assert_exported(Path(moved), urls, "webp")


def test_output_paths_are_checked_before_anything_runs(tmp_path, refusal):
    source = tmp_path / "products.csv"
    source.write_text("S. No.,Product Name,Input Image Urls\n1,Lamp,https://x.example/a.jpg\n")
    code, stderr = refusal(str(source), "-o", "x.csv", "--output-dir", str(tmp_path / "d"))
    assert code == 2
    assert "not allowed with argument" in stderr
    (tmp_path / "file").write_text("")
    code, stderr = refusal(str(source), "--output-dir", str(tmp_path / "file" / "d"))
    assert code == 2
    assert "invalid option --output-dir" in stderr
    code, stderr = refusal(str(source), "-o", str(tmp_path / "nowhere" / "out.csv"))
    assert code == 2
    assert "invalid option --output: no such folder" in stderr


def test_many_failures_are_counted_by_reason_and_listed_in_a_csv(tmp_path, image_server):
    good = image_server.add("/a.jpg", images.jpeg_rgb(), content_type="image/jpeg")
    junk = [
        image_server.add(f"/junk{n}.jpg", images.not_an_image(), content_type="image/jpeg")
        for n in range(3)
    ]
    gone = [image_server.url(f"/gone{n}.jpg") for n in range(cli.MAX_LISTED_FAILURES)]
    source = tmp_path / "products.csv"
    source.write_text(
        "S. No.,Product Name,Input Image Urls\n"
        f"0,Lamp,{good}\n\n"  # a blank line: from here on, line = row + 3
        + "".join(f"{n},Item {n},{url}\n" for n, url in enumerate(gone + junk, 1))
    )
    result = run_cli(tmp_path, str(source), "--no-progress", "-o", str(tmp_path / "out.csv"))
    assert result.returncode == 1, result.stderr
    total = len(gone) + len(junk)
    assert result.stdout.startswith(f"completed_with_errors: 1/{total + 1} images done")
    assert "failed: line" not in result.stderr  # counted, not listed
    assert f"{total} images failed; the most common reasons:" in result.stderr
    counted = re.findall(r"^ +(\d+)  (.+)$", result.stderr, re.MULTILINE)
    assert counted[0] == (str(len(gone)), "download failed: HTTP 404")
    assert counted[1][0] == str(len(junk)) and "not a supported image" in counted[1][1]
    failures_csv = tmp_path / "out.failures.csv"
    assert f"every failure with its line and reason: {failures_csv}" in result.stderr
    failures = list(csv.DictReader(failures_csv.open(encoding="utf-8")))
    assert len(failures) == total
    assert [(f["Line"], f["Product Name"]) for f in failures[:2]] == [
        ("4", "Item 1"),
        ("5", "Item 2"),
    ]


def test_output_dir_reads_the_images_from_s3(tmp_path, image_server, s3_endpoint, s3_credentials):
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="cli-export")
    text, urls = csv_naming_lines(image_server)
    source = tmp_path / "products.csv"
    source.write_text(text)
    out = tmp_path / "outputs"
    s3 = {"STORAGE_URL": "s3://cli-export/objects", "S3_ENDPOINT_URL": s3_endpoint}
    result = run_cli(tmp_path, str(source), "--no-progress", "--output-dir", str(out), **s3)
    assert result.returncode == 1, result.stderr
    assert not (tmp_path / "data" / "objects").exists()  # nothing stored locally
    assert_exported(out, urls, "jpg")


@pytest.mark.parametrize(
    ("environ", "where", "links"),
    [
        (
            {},
            "images: stored in {data}/objects/{folder}/",
            "links: http://localhost:5000/media/{folder}/… are served by the API (`make run`)"
            " while it runs with the same DATA_DIR or STORAGE_URL",
        ),
        (
            {"API_KEYS": "a-key-of-16-chars-or-more", "API_BASE_URL": "https://images.example"},
            "images: stored in {data}/objects/{folder}/",
            "links: https://images.example/media/{folder}/… point at the API's /media, which"
            " does not serve them while API_KEYS is set (a batch run belongs to no key)",
        ),
        (
            {"PUBLIC_BASE_URL": "https://cdn.example/img"},
            "images: stored in {data}/objects/{folder}/",
            "links: https://cdn.example/img/{folder}/… (PUBLIC_BASE_URL): they open where that"
            " address serves the stored images",
        ),
        (
            {"STORAGE_URL": "s3://shop-images/out"},
            "images: stored at s3://shop-images/out/{folder}/",
            "links: https://shop-images.s3.amazonaws.com/out/{folder}/…, the bucket's own URLs:"
            ' they open when the bucket lets anyone read output images (README "Output URLs on'
            ' S3")',
        ),
        (
            {"STORAGE_URL": "s3://shop-images/out", "OUTPUT_URL_MODE": "presigned"},
            "images: stored at s3://shop-images/out/{folder}/",
            "links: presigned URLs of the bucket, valid until ",
        ),
    ],
)
def test_where_the_outputs_are_says_what_serves_the_links(
    tmp_path, s3_credentials, environ, where, links
):
    # s3_credentials: presigning needs some; no request is sent.
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), **environ})
    storage, _ = open_storage(settings)
    request_id = "0" * 32
    # A stand-in for Services: describe_outputs reads only its settings and storage.
    services = cast(Services, SimpleNamespace(settings=settings, storage=storage))
    said = describe_outputs(services, request_id)
    fill = {"data": tmp_path.resolve(), "folder": f"requests/{request_id}/images"}
    assert said[0] == where.format(**fill)
    assert said[1].startswith(links.format(**fill)), said[1]


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
def test_bad_input_exit_codes(tmp_path, refusal, content, args, code, needle):
    source = tmp_path / "products.csv"
    if content is not None:
        source.write_text(content)
    exit_code, stderr = refusal(str(source), "--no-progress", *args)
    assert exit_code == code, stderr
    assert needle in stderr


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
    assert record.options is not None
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
    urls = slow_images(image_server, 12, delay=1.0)
    source = tmp_path / "products.csv"
    source.write_bytes(products_csv(urls, per_row=1))
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

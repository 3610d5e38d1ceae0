"""The upload page in a real browser: Debian's headless chromium driven by Selenium."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import partial
from urllib.parse import parse_qs, urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests import imagefactory as images
from tests.integration.flows import products_csv, slow_images
from tests.integration.service import Service

pytestmark = pytest.mark.integration
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FINAL_TEXTS = ("completed", "completed with errors", "failed", "cancelled")  # as the page shows
DASH = "\N{EN DASH}"  # in the page's ranges: "products 1-50 of 100" with an en dash


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "needs Debian's chromium and chromium-driver (make test installs them as root)"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing browser is a broken build, not a skip
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Every response the browser gets (statuses included), for `statuses_seen`.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    profile = tempfile.mkdtemp(prefix="chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("page") / "data").start()
    yield svc
    svc.stop()


def choose_and_upload(browser, service, csv_path) -> WebDriverWait:
    browser.get(service.base_url + "/")
    return choose_file_and_submit(browser, csv_path)


def choose_file_and_submit(browser, csv_path) -> WebDriverWait:
    browser.find_element(By.ID, "file").send_keys(str(csv_path))
    browser.find_element(By.ID, "submit").click()
    return WebDriverWait(browser, 120, poll_frequency=0.2)


def decoded(browser, img) -> bool:
    """The browser has the image and decoded it (a broken one has no natural width)."""
    return browser.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", img
    )


def statuses_seen(browser) -> list[tuple[int, str]]:
    """(status, URL) of every response the browser got since the last call."""
    seen = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            seen.append((response["status"], response["url"]))
    return seen


def test_upload_watch_progress_and_download(browser, service, image_server, tmp_path):
    good = [
        image_server.add("/a.jpg", images.jpeg_rgb(), content_type="image/jpeg"),
        image_server.add("/b.png", images.png_rgba(), content_type="image/png"),
        image_server.add(
            "/c.jpg", images.jpeg_exif_rotated(), content_type="image/jpeg", delay=0.5
        ),
    ]
    missing = image_server.url("/gone.jpg")
    csv_path = tmp_path / "products.csv"
    csv_path.write_text(
        "S. No.,Product Name,Input Image Urls\n"
        f'1,Lamp,"{good[0]},{good[1]}"\n2,Vase,"{good[2]},{missing}"\n'
    )
    wait = choose_and_upload(browser, service, csv_path)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "completed with errors"))
    assert browser.find_element(By.ID, "progress").get_attribute("value") == "100"
    assert browser.find_element(By.ID, "total").text == "4"
    assert browser.find_element(By.ID, "done").text == "3"
    assert browser.find_element(By.ID, "failed").text == "1"
    # Nothing chosen: the server's defaults, as the request stored them.
    assert browser.find_element(By.ID, "options").text == "JPEG q50, original size"
    failures = browser.find_elements(By.CSS_SELECTOR, "#failures li")
    assert len(failures) == 1 and "HTTP 404" in failures[0].text and "line 3" in failures[0].text
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#thumbs img")
    assert len(thumbs) == 3
    # Thumbnails of the real outputs, loaded and decoded by the browser.
    wait.until(lambda b: all(decoded(b, t) for t in thumbs))
    link = browser.find_element(By.ID, "csv-link").get_attribute("href")
    csv = service.get(link)
    assert csv.status == 200 and csv.data.startswith(
        b"S. No.,Product Name,Input Image Urls,Output Image Urls"
    )


def test_bad_csv_shows_a_clear_message(browser, service, tmp_path):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("S. No.,Product Name\n1,Lamp\n")
    wait = choose_and_upload(browser, service, csv_path)
    wait.until(ec.text_to_be_present_in_element((By.ID, "message"), "refused"))
    message = browser.find_element(By.ID, "message")
    assert "error" in message.get_attribute("class")
    assert "Invalid CSV" in message.text and "Input Image Urls" in message.text


def test_output_options_chosen_in_the_page(browser, service, image_server, tmp_path):
    url = image_server.add("/wide.jpg", images.jpeg_rgb(), content_type="image/jpeg")  # 640x480
    csv_path = tmp_path / "products.csv"
    csv_path.write_text(f"S. No.,Product Name,Input Image Urls\n1,Lamp,{url}\n")
    browser.get(service.base_url + "/")
    Select(browser.find_element(By.ID, "format")).select_by_value("webp")
    browser.find_element(By.ID, "max_width").send_keys("64")
    browser.find_element(By.ID, "file").send_keys(str(csv_path))
    browser.find_element(By.ID, "submit").click()
    wait = WebDriverWait(browser, 120, poll_frequency=0.2)
    wait.until(lambda b: b.find_element(By.ID, "status").text in FINAL_TEXTS)
    assert browser.find_element(By.ID, "status").text == "completed"

    request_id = browser.find_element(By.ID, "request-id").text
    options = service.get_json(f"/api/v1/requests/{request_id}")["options"]
    assert {**options, "quality": None} == {
        "format": "webp",
        "quality": None,  # the server's WebP default, whatever it is
        "max_width": 64,
        "max_height": None,
    }
    shown = browser.find_element(By.ID, "options").text
    assert shown == f"WebP q{options['quality']}, max width 64"

    (thumb,) = browser.find_elements(By.CSS_SELECTOR, "#thumbs img")
    output_url = thumb.get_attribute("data-output-url")
    assert output_url.endswith(".webp")
    # No key: the thumbnail route straight from <img>, a JPEG never larger than the
    # output (64x48: fitted inside 64 wide with its shape kept).
    assert urlsplit(thumb.get_attribute("src")).path == (
        f"/api/v1/requests/{request_id}/thumbnails/1-1.jpg"
    )
    assert thumb.get_attribute("loading") == "lazy"
    wait.until(lambda b: decoded(b, thumb))
    size = browser.execute_script(
        "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", thumb
    )
    assert size == [64, 48]
    assert service.get(thumb.get_attribute("src")).headers["Content-Type"] == "image/jpeg"
    # The full output, in its format, one click away.
    link = thumb.find_element(By.XPATH, "..")
    assert link.get_attribute("href") == output_url
    assert service.get(output_url).headers["Content-Type"] == "image/webp"
    csv = service.get(browser.find_element(By.ID, "csv-link").get_attribute("href"))
    assert csv.data.decode().splitlines()[1].endswith(".webp")


def test_a_refused_option_is_shown_at_its_control(browser, service, tmp_path):
    csv_path = tmp_path / "products.csv"
    csv_path.write_text("S. No.,Product Name,Input Image Urls\n1,Lamp,https://example.com/a.jpg\n")
    recorded = service.get_json("/api/v1/requests")["page"]["total"]
    browser.get(service.base_url + "/")
    quality = browser.find_element(By.ID, "quality")
    # The control's own range would stop a 0 before it is sent; the server must refuse it too.
    browser.execute_script(
        "arguments[0].removeAttribute('min'); arguments[0].removeAttribute('max')", quality
    )
    quality.send_keys("0")
    wait = choose_file_and_submit(browser, csv_path)
    wait.until(ec.text_to_be_present_in_element((By.ID, "message"), "refused"))
    message = browser.find_element(By.ID, "message")
    assert "error" in message.get_attribute("class")
    assert "Invalid option" in message.text and "quality" in message.text
    note = browser.find_element(By.ID, "quality-error")
    assert note.text.startswith("quality:") and "1-95" in note.text
    assert quality.get_attribute("aria-invalid") == "true"
    assert browser.find_element(By.ID, "request").get_attribute("class") == "hidden"
    assert service.get_json("/api/v1/requests")["page"]["total"] == recorded  # nothing recorded
    quality.send_keys("5")  # "05": editing the control clears its mark
    assert not browser.find_elements(By.ID, "quality-error")
    assert quality.get_attribute("aria-invalid") is None


PAGE_KEY = "page-test-key-0123456789"


@pytest.fixture
def slow_service(tmp_path):
    """One image per batch on one thread, behind an API key: a run slow enough to cancel."""
    svc = Service(
        tmp_path / "data", API_KEYS=PAGE_KEY, BATCH_SIZE="1", DASK_THREADS_PER_WORKER="1"
    ).start()
    yield svc
    svc.stop()


def test_cancel_an_unfinished_request(browser, slow_service, image_server, tmp_path):
    urls = slow_images(image_server, 10, delay=2.0)
    csv_path = tmp_path / "products.csv"
    csv_path.write_bytes(products_csv(urls, per_row=1))
    browser.get(slow_service.base_url + "/")
    browser.find_element(By.ID, "key").send_keys(PAGE_KEY)
    browser.find_element(By.ID, "file").send_keys(str(csv_path))
    browser.find_element(By.ID, "submit").click()
    wait = WebDriverWait(browser, 120, poll_frequency=0.2)
    cancel = wait.until(ec.element_to_be_clickable((By.ID, "cancel")))
    assert browser.find_element(By.ID, "status").text in ("pending", "queued", "processing")
    cancel.click()  # sent with the key: without it the service would answer 401
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "cancelled"))
    assert not browser.find_element(By.ID, "cancel").is_enabled()
    assert "Cancelled" in browser.find_element(By.ID, "message").text
    cancelled = int(browser.find_element(By.ID, "cancelled").text)
    done = int(browser.find_element(By.ID, "done").text)
    assert cancelled >= 1 and done + cancelled == len(urls)
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#thumbs img")
    assert len(thumbs) == done
    # <img> cannot send the key: the page fetched each thumbnail with it.
    for thumb in thumbs:
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", thumb)
        wait.until(partial(decoded, img=thumb))
        assert thumb.get_attribute("src").startswith("blob:")
    assert sum(image_server.hits.values()) < len(urls)  # nothing new started


@pytest.fixture
def limited_service(tmp_path):
    """The API's default rate limits (120 a minute, bursts of 30, and the images' own),
    and small batches, so a 200-image request shows its progress for a few seconds."""
    svc = Service(
        tmp_path / "data", RATE_LIMIT_PER_MINUTE="120", RATE_LIMIT_BURST="30", BATCH_SIZE="8"
    ).start()
    yield svc
    svc.stop()


def show_every_thumbnail(browser, wait) -> list:
    """Scroll each thumbnail of the products page into view and wait until it is decoded."""
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#thumbs img")
    for thumb in thumbs:
        assert thumb.get_attribute("loading") == "lazy"
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", thumb)
        wait.until(partial(decoded, img=thumb))
    return thumbs


def test_a_200_image_request_watched_paged_reloaded_and_deleted(
    browser, limited_service, image_server, tmp_path
):
    service = limited_service
    photo = images.jpeg_rgb()
    # 100 products of two images; line 40's second and line 83's first are missing.
    missing = {(38, 1), (81, 0)}
    rows = []
    for row in range(100):
        urls = [
            image_server.url(f"/gone-{row}-{p}.jpg")
            if (row, p) in missing
            else image_server.add(f"/{row}-{p}.jpg", photo, content_type="image/jpeg", delay=0.3)
            for p in range(2)
        ]
        rows.append(f'{row + 1},Lamp {row + 1},"{urls[0]},{urls[1]}"\n')
    csv_path = tmp_path / "products.csv"
    csv_path.write_text("S. No.,Product Name,Input Image Urls\n" + "".join(rows))
    browser.get(service.base_url + "/")
    statuses_seen(browser)  # drops what earlier tests' pages got
    seen: list[tuple[int, str]] = []  # every response from here on
    wait = choose_file_and_submit(browser, csv_path)

    # While it runs: the rate and how long the rest should take.
    wait.until(ec.text_to_be_present_in_element((By.ID, "pace"), "left"))
    assert "images/s" in browser.find_element(By.ID, "pace").text
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "completed with errors"))
    request_id = browser.find_element(By.ID, "request-id").text
    # At its own address, which a reload keeps.
    assert parse_qs(urlsplit(browser.current_url).query)["request"] == [request_id]

    # Failures grouped by reason, listed by line, and all in the CSV.
    [group] = browser.find_elements(By.CSS_SELECTOR, "#failure-reasons tbody tr")
    assert "HTTP 404" in group.text and group.find_elements(By.TAG_NAME, "td")[1].text == "2"
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#failures li")) == 2)
    listed = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#failures li")]
    assert listed[0].startswith("line 40 (Lamp 39), image 2: ") and "HTTP 404" in listed[0]
    assert listed[1].startswith("line 83 (Lamp 82), image 1: ")
    failures_csv = service.get(browser.find_element(By.ID, "failures-csv").get_attribute("href"))
    lines = failures_csv.data.decode().splitlines()
    assert lines[0] == "Line,S. No.,Product Name,Input Image Url,Reason" and len(lines) == 3
    assert "/gone-38-1.jpg" in lines[1] and "/gone-81-0.jpg" in lines[2]

    # Products 50 a page, named by line; every thumbnail decoded, loaded lazily.
    assert browser.find_element(By.ID, "products-range").text == f"products 1{DASH}50 of 100"
    products = browser.find_elements(By.CSS_SELECTOR, "#thumbs .product")
    assert len(products) == 50 and products[0].text.startswith("line 2 Lamp 1")
    seen += statuses_seen(browser)
    fetched = {url for _, url in seen if "/thumbnails/" in url}
    assert len(fetched) < 99, "lazy: thumbnails far below the fold wait for a scroll"
    assert len(show_every_thumbnail(browser, wait)) == 99
    browser.find_element(By.ID, "products-next").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "products-range"), f"51{DASH}100 of 100"))
    assert browser.find_element(By.CSS_SELECTOR, "#thumbs .product").text.startswith("line 52")
    assert len(show_every_thumbnail(browser, wait)) == 99
    assert "page=2" in browser.current_url

    # The caller's recent requests list it.
    row = browser.find_element(By.CSS_SELECTOR, f"#recent-list tr[data-request-id='{request_id}']")
    assert "completed with errors" in row.text and row.get_attribute("aria-current") == "true"

    # A reload shows the same request at the same page.
    browser.refresh()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "completed with errors"))
    assert browser.find_element(By.ID, "request-id").text == request_id
    wait.until(ec.text_to_be_present_in_element((By.ID, "products-range"), f"51{DASH}100 of 100"))
    show_every_thumbnail(browser, wait)

    # No answer was a 429, though thumbnails, status polls and pages all came from one
    # address; each of the 198 thumbnails was answered, and is cached with the request.
    seen += statuses_seen(browser)
    assert [(code, url) for code, url in seen if code == 429] == []
    thumbnails = {url for code, url in seen if "/thumbnails/" in url and code == 200}
    assert len(thumbnails) == 198
    stored = service.data_dir / "objects" / "requests" / request_id
    assert len(list((stored / "thumbs").iterdir())) == 198

    # Delete, after confirming.
    browser.find_element(By.ID, "delete").click()
    alert = wait.until(ec.alert_is_present())
    assert request_id in alert.text
    alert.accept()
    wait.until(ec.text_to_be_present_in_element((By.ID, "message"), "Deleted request"))
    assert browser.find_element(By.ID, "request").get_attribute("class") == "hidden"
    assert "request=" not in browser.current_url
    wait.until(
        lambda b: not b.find_elements(By.CSS_SELECTOR, f"tr[data-request-id='{request_id}']")
    )
    assert service.get(f"/api/v1/requests/{request_id}").status == 404
    assert not stored.exists()  # thumbnails and all

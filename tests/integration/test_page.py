"""The upload page in a real browser: Debian's headless chromium driven by Selenium."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests import imagefactory as images
from tests.integration.service import Service

pytestmark = pytest.mark.integration
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FINAL_TEXTS = ("completed", "completed with errors", "failed", "cancelled")  # as the page shows


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "needs Debian's chromium and chromium-driver (make test installs them as root)"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a missing browser is a broken build, not a skip
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
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
    # The thumbnails are the real outputs, loaded and decoded by the browser.
    wait.until(
        lambda b: all(b.execute_script("return arguments[0].naturalWidth", t) > 0 for t in thumbs)
    )
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
    assert thumb.get_attribute("data-output-url").endswith(".webp")
    assert thumb.get_attribute("src").endswith(".webp")  # no key: loaded straight from its URL
    # Decoded by the browser as WebP, fitted inside 64 wide with its shape kept.
    wait.until(lambda b: b.execute_script("return arguments[0].complete", thumb))
    size = browser.execute_script(
        "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", thumb
    )
    assert size == [64, 48]
    served = service.get(thumb.get_attribute("src"))
    assert served.headers["Content-Type"] == "image/webp"
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
    urls = [
        image_server.add(f"/{n}.jpg", images.jpeg_rgb(), content_type="image/jpeg", delay=2.0)
        for n in range(10)
    ]
    csv_path = tmp_path / "products.csv"
    csv_path.write_text(
        "S. No.,Product Name,Input Image Urls\n"
        + "".join(f"{n},Lamp {n},{url}\n" for n, url in enumerate(urls))
    )
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
    assert len(browser.find_elements(By.CSS_SELECTOR, "#thumbs img")) == done
    assert sum(image_server.hits.values()) < len(urls)  # nothing new started

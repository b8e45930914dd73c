"""The dashboard in a real headless Chromium, against a live API and a real worker.

Runs with `make test-browser` (marker `browser`), which installs Debian's chromium and
chromium-driver where they are missing. Screenshots of each page go to artifacts/screenshots/.
"""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from service.api import create_app
from service.settings import Settings
from tests.conftest import ROOT, TINY_SPEC, api_process, train_queued, upgrade

pytestmark = pytest.mark.browser

SCREENSHOTS = ROOT / "artifacts" / "screenshots"
# axe-core's checker, which make test-browser fetches from npm.
AXE = ROOT / ".cache" / "axe-core" / "axe.min.js"
AXE_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, { runOnly: ["wcag2a", "wcag2aa"] }).then(
  (result) => done(result.violations.map((v) => [v.id, v.impact, v.nodes[0].html])));
"""
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
KEY = "d" * 32
FAST_WORKER = {"WORKER_POLL_SECONDS": "0.1", "WORKER_HEARTBEAT_SECONDS": "0.5"}


@pytest.fixture(scope="module")
def database(tmp_path_factory, kept_trainers) -> str:
    """Two trained experiments of different accuracy and a trained two-variant study."""
    url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'test.db'}"
    upgrade(url)
    settings = Settings(database_url=url, allowed_hosts=["testserver"], _env_file=None)
    with TestClient(create_app(settings)) as client:
        for samples in (300, 1200):
            spec = {**TINY_SPEC, "epochs": 1, "train_samples": samples, "name": f"{samples} images"}
            assert client.post("/experiments", json=spec).status_code == 202
        base = {key: value for key, value in TINY_SPEC.items() if key != "seed"}
        study = {"name": "width", "base": {**base, "epochs": 1}, "grid": {"filters": [4, 8]}}
        assert client.post("/studies", json=study).status_code == 202
        train_queued(settings, kept_trainers)
    return url


@pytest.fixture(scope="module")
def server(database, tmp_path_factory):
    """The API and one worker process, as `make up` runs them."""
    log = tmp_path_factory.mktemp("dashboard-logs")
    worker = subprocess.Popen(
        [sys.executable, "-m", "service", "worker", "--device", "cpu"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database, **FAST_WORKER},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        with api_process(database, log / "api.log") as base:
            yield base
    finally:
        worker.terminate()
        worker.wait(30)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or DRIVER is None:
        pytest.skip(
            "SKIPPED: chromium and chromium-driver are not installed (make test-browser "
            "installs them as root on Debian)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1600")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


READ = """
const element = document.querySelector(arguments[0]);
if (!element) return null;
return arguments[1] === "value" ? element.value : element.getAttribute(arguments[1]);
"""


def wait(browser, condition, timeout: float = 60):
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(lambda _: condition())


def shot(browser, name: str) -> None:
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def accuracies(browser) -> list[float]:
    cells = browser.find_elements(By.CSS_SELECTOR, "#experiments td.test-accuracy")
    return [float(cell.text) for cell in cells if cell.text]


def test_the_table_lists_experiments_and_sorts_by_test_accuracy(server, browser):
    browser.get(f"{server}/")
    assert browser.current_url.endswith("/ui/experiments")
    names = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#experiments td")]
    assert "300 images" in names and "1200 images" in names
    browser.find_element(By.CSS_SELECTOR, 'a[data-sort="accuracy"]').click()
    wait(browser, lambda: "sort=accuracy" in browser.current_url)
    descending = accuracies(browser)
    assert len(descending) >= 4 and descending == sorted(descending, reverse=True)
    browser.find_element(By.CSS_SELECTOR, 'a[data-sort="accuracy"]').click()
    wait(browser, lambda: "order=asc" in browser.current_url)
    assert accuracies(browser) == sorted(descending)
    shot(browser, "experiments")


def test_a_bad_value_shows_its_422_message_and_a_good_form_queues_a_run_that_trains_live(
    server, browser
):
    browser.get(f"{server}/ui/experiments")
    form = browser.find_element(By.ID, "submit-form")

    def fill(field: str, value: str) -> None:
        element = form.find_element(By.NAME, field)
        element.clear()
        element.send_keys(value)

    def error_at(field: str) -> str:
        return form.find_element(By.CSS_SELECTOR, f'.field-error[data-field="{field}"]').text

    fill("filters", "0")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda: "greater than or equal to 1" in error_at("filters"))
    assert form.find_element(By.NAME, "filters").get_attribute("aria-invalid") == "true"
    # A stop metric without a threshold is refused, not read as a threshold of 0.
    fill("filters", "8")
    Select(form.find_element(By.NAME, "stop_metric")).select_by_visible_text("accuracy")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda: "required" in error_at("stop").lower())
    Select(form.find_element(By.NAME, "stop_metric")).select_by_index(0)
    total = httpx.get(f"{server}/experiments").json()["total"]
    for field, value in {
        "conv_layers": "1",
        # Long enough (about half a minute) to watch from two tabs while it trains.
        "epochs": "12",
        "train_samples": "12000",
        "batch_size": "32",
        "validation_split": "0.1",
    }.items():
        fill(field, value)
    browser.find_element(By.ID, "preview").click()
    wait(browser, lambda: "parameters" in browser.find_element(By.ID, "layer-preview").text)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda: "/ui/experiments/" in browser.current_url)
    assert httpx.get(f"{server}/experiments").json()["total"] == total + 1
    experiment_id = browser.current_url.rsplit("/", 1)[1]
    # The same page, never reloaded, follows the run: the marker would not survive a reload.
    browser.execute_script("window.stillHere = true")

    # Read in one script call: the live part is redrawn between two WebDriver calls.
    def epochs_drawn() -> int:
        return int(browser.execute_script(READ, "#curves", "data-epochs") or 0)

    def progress(selector: str = "#progress") -> float:
        value = browser.execute_script(READ, selector, "value")
        return float(value) if value else -1.0

    wait(browser, lambda: progress() > 0, timeout=120)
    first = progress()
    wait(browser, lambda: progress() > first, timeout=60)
    wait(browser, lambda: epochs_drawn() >= 1, timeout=120)
    shot(browser, "experiment-running")
    wait(browser, lambda: epochs_drawn() >= 2, timeout=120)
    assert int(browser.execute_script(READ, "#curves polyline.series", "data-points")) >= 2
    # Meanwhile, in a second tab, the list's progress bar for the run moves on its own.
    watching = browser.current_window_handle
    browser.switch_to.new_window("tab")
    browser.get(f"{server}/ui/experiments")
    browser.execute_script("window.listStillHere = true")
    row_bar = f'tr[data-experiment-id="{experiment_id}"] progress'
    wait(browser, lambda: progress(row_bar) > 0, timeout=60)
    before = progress(row_bar)
    wait(browser, lambda: progress(row_bar) > before, timeout=60)
    assert browser.execute_script("return window.listStillHere") is True
    shot(browser, "experiments-running")
    browser.close()
    browser.switch_to.window(watching)
    wait(browser, lambda: browser.find_elements(By.ID, "confusion"), timeout=180)
    assert browser.find_elements(By.CSS_SELECTOR, "#misclassified img")
    assert browser.find_element(By.ID, "status").text == "succeeded"
    assert browser.find_elements(By.ID, "dropzone")  # A model now: it can classify.
    assert browser.execute_script("return window.stillHere") is True
    shot(browser, "experiment")


def png_b64(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


DROP = """
const [data, name] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, { type: "image/png" }));
const zone = document.getElementById("dropzone");
for (const type of ["dragenter", "dragover", "drop"]) {
  const options = { dataTransfer: transfer, bubbles: true, cancelable: true };
  zone.dispatchEvent(new DragEvent(type, options));
}
"""


def test_dropping_a_test_image_shows_its_class(server, browser, dataset):
    experiment_id = 2  # Trained on 1,200 images.
    for index in range(50):
        image, label = dataset.test_images[index], int(dataset.test_labels[index])
        answer = httpx.post(
            f"{server}/predict",
            params={"experiment_id": experiment_id},
            json={"instances": [image.tolist()]},
            # The first request loads Keras and the model in the API: seconds, not httpx's 5.
            timeout=60,
        ).json()["predictions"][0]
        if answer["label"] == label:
            break
    browser.get(f"{server}/ui/experiments/{experiment_id}")
    browser.execute_script(DROP, png_b64(image), "garment.png")
    shown = wait(browser, lambda: browser.find_element(By.ID, "predicted-class").text)
    assert shown.startswith(answer["class_name"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#prediction .bar")) == 10
    browser.execute_script("document.getElementById('prediction').scrollIntoView()")
    shot(browser, "experiment-predict")


def test_the_study_page_draws_its_pareto_fronts(server, browser):
    browser.get(f"{server}/ui/studies/1")
    points = browser.find_elements(By.CSS_SELECTOR, "#pareto svg circle")
    assert len(points) == 4  # Two variants, on two fronts.
    assert browser.find_elements(By.CSS_SELECTOR, "#pareto svg circle.front-point")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#variants tbody tr")) == 2
    shot(browser, "study")


def test_the_workers_page_shows_the_live_worker(server, browser):
    browser.get(f"{server}/ui/workers")
    wait(browser, lambda: "alive" in browser.find_element(By.ID, "workers").text)
    shot(browser, "workers")


def test_no_request_leaves_the_server(server, browser):
    """Every URL the pages asked for, read from Chromium's own network log."""
    browser.get_log("performance")  # Drop what came before.
    for path in ("/ui/experiments", "/ui/experiments/1", "/ui/studies/1", "/ui/workers"):
        browser.get(f"{server}{path}")
        time.sleep(0.5)
    urls = [
        message["params"]["request"]["url"]
        for entry in browser.get_log("performance")
        if (message := json.loads(entry["message"])["message"])["method"]
        == "Network.requestWillBeSent"
    ]
    assert urls and all(url.startswith((server, "data:", "blob:")) for url in urls), urls


def test_with_keys_the_page_asks_for_the_key_before_any_data(database, browser, tmp_path):
    with api_process(database, tmp_path / "api.log", API_KEYS=KEY) as base:
        browser.get(f"{base}/ui/experiments")
        assert browser.find_element(By.ID, "key-prompt").is_displayed()
        assert not browser.find_elements(By.ID, "experiments")
        assert "1200 images" not in browser.page_source
        shot(browser, "key-prompt")
        browser.find_element(By.ID, "api-key").send_keys("wrong" * 8)
        browser.find_element(By.CSS_SELECTOR, "#key-prompt button").click()
        wait(browser, lambda: browser.find_element(By.ID, "key-error").text)
        browser.find_element(By.ID, "api-key").clear()
        browser.find_element(By.ID, "api-key").send_keys(KEY)
        browser.find_element(By.CSS_SELECTOR, "#key-prompt button").click()
        wait(browser, lambda: browser.find_elements(By.ID, "experiments"))
        assert "1200 images" in browser.page_source
        browser.execute_script("sessionStorage.clear()")


def test_every_page_passes_axe_core_wcag_aa_checks_contrast_included(server, browser):
    if not AXE.exists():
        pytest.skip(f"SKIPPED: axe-core is not at {AXE} (make test-browser fetches it with npm)")
    checker = AXE.read_text()
    for path in ("/ui/experiments", "/ui/experiments/2", "/ui/studies/1", "/ui/workers"):
        browser.get(f"{server}{path}")
        browser.execute_script(checker)
        assert browser.execute_async_script(AXE_RUN) == [], path
    # The checker does catch what it is here for: pale text added to the last page.
    browser.execute_script(
        "document.querySelector('main').insertAdjacentHTML('beforeend', "
        "'<p style=\"color: #ccc\">pale</p>')"
    )
    assert "color-contrast" in [violation[0] for violation in browser.execute_async_script(AXE_RUN)]


def test_the_tables_render_without_javascript(server):
    """The server renders every table: what a browser with JavaScript off gets."""
    page = httpx.get(f"{server}/ui/experiments", params={"sort": "accuracy"}).text
    assert '<table id="experiments">' in page and "1200 images" in page
    assert 'id="variants"' in httpx.get(f"{server}/ui/studies/1").text
    assert Path(SCREENSHOTS).is_dir()

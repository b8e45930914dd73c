"""How fast the dashboard's pages paint in headless Chromium, beside the JSON they show.

Seeds a SQLite database with 200 finished experiments and a study of 27 variants (27 runs of
3 epochs each; the rows are written directly, nothing trains), starts the API, and loads each
page --runs times in Chromium (a fresh tab each time, cache off). From the browser's own
Performance API: the HTML's arrival, first contentful paint, the first chart painted (the SVG
is in the server's HTML, so it is the first paint that holds one), DOMContentLoaded, and the
bytes transferred. The baseline is the JSON API call that returns the same data, timed with
httpx on the same machine.
Needs chromium and chromium-driver (`make test-browser` installs them).

    .venv/bin/python bench/dashboard_speed.py [--runs 5]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2 as httpx
from common import ROOT, api_server
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from sqlalchemy import update

from service.api import create_app
from service.db import create_db_engine, create_session_factory
from service.models import EpochMetric, Experiment, ExperimentStatus
from service.settings import Settings

SPEC = {"conv_layers": 1, "filters": 8, "dense_units": [32], "epochs": 3, "train_samples": 600}
STUDY = {
    "name": "27 variants",
    "base": SPEC,
    "grid": {"filters": [4, 8, 16], "conv_layers": [1, 2, 3], "dense_units": [[16], [32], [64]]},
}
# Waits for the first contentful paint, which may be recorded after the load event.
TIMING = """
const done = arguments[arguments.length - 1];
new PerformanceObserver((list, observer) => {
  const paint = list.getEntriesByName("first-contentful-paint")[0];
  if (!paint) return;
  observer.disconnect();
  const navigation = performance.getEntriesByType("navigation")[0];
  const resources = performance.getEntriesByType("resource");
  done({
    html_ms: navigation.responseEnd,
    fcp_ms: paint.startTime,
    dom_ms: navigation.domContentLoadedEventEnd,
    chart: document.querySelector("svg.chart") !== null,
    bytes: navigation.transferSize + resources.reduce((sum, r) => sum + r.transferSize, 0),
  });
}).observe({ type: "paint", buffered: true });
"""


def seed(url: str) -> int:
    """200 finished experiments and a 27-variant study; the study's id."""
    settings = Settings(
        database_url=url, allowed_hosts=["testserver"], max_queued=1000, _env_file=None
    )
    with TestClient(create_app(settings)) as client:
        for index in range(200):
            client.post("/experiments", json={**SPEC, "name": f"run {index}", "seed": index})
        study_id = client.post("/studies", json=STUDY).json()["id"]
    engine = create_db_engine(url)
    session_factory = create_session_factory(engine)
    with session_factory() as session:
        started = datetime.now(UTC) - timedelta(hours=1)
        for experiment in session.query(Experiment):
            accuracy = 0.7 + (experiment.id * 37 % 100) / 500
            session.execute(
                update(Experiment)
                .where(Experiment.id == experiment.id)
                .values(
                    status=ExperimentStatus.SUCCEEDED,
                    test_accuracy=accuracy,
                    test_loss=1 - accuracy,
                    started_at=started,
                    finished_at=started + timedelta(seconds=30),
                )
            )
            for epoch in (1, 2, 3):
                session.add(
                    EpochMetric(
                        experiment_id=experiment.id,
                        epoch=epoch,
                        loss=1.0 / epoch,
                        accuracy=accuracy - 0.05 / epoch,
                        val_loss=1.1 / epoch,
                        val_accuracy=accuracy - 0.06 / epoch,
                        seconds=2.0 + experiment.id % 3,
                        ms_per_step=3.0,
                    )
                )
        session.commit()
    engine.dispose()
    return study_id


def chromium() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--disk-cache-size=0")
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def measure_page(driver: webdriver.Chrome, url: str, runs: int) -> dict:
    results = []
    for _ in range(runs + 1):  # The first load warms the server up and is not counted.
        driver.switch_to.new_window("tab")
        driver.get(url)
        results.append(driver.execute_async_script(TIMING))
        driver.close()
        driver.switch_to.window(driver.window_handles[0])
    kept = results[1:]
    return {
        key: statistics.median(result[key] for result in kept)
        for key in ("html_ms", "fcp_ms", "dom_ms", "bytes")
    } | {"chart": all(result["chart"] for result in kept)}


def measure_json(url: str, runs: int) -> float:
    with httpx.Client(timeout=30) as client:
        client.get(url)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            assert client.get(url).status_code == 200
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'bench.db'}"
        env = {**os.environ, "DATABASE_URL": url}
        subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=ROOT, env=env, check=True)
        study_id = seed(url)
        with api_server(env) as base:
            driver = chromium()
            try:
                pages = {
                    "experiments (200, one page of 25)": (
                        f"{base}/ui/experiments?sort=accuracy",
                        f"{base}/experiments?limit=25",
                    ),
                    "study (27 variants)": (
                        f"{base}/ui/studies/{study_id}",
                        f"{base}/studies/{study_id}",
                    ),
                    "experiment (3 epochs)": (f"{base}/ui/experiments/1", f"{base}/experiments/1"),
                }
                rows = {
                    name: (measure_page(driver, page, args.runs), measure_json(api_url, args.runs))
                    for name, (page, api_url) in pages.items()
                }
            finally:
                driver.quit()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; Chromium and the API on it")
    print(
        "| page | HTML ms | first paint ms | first chart | DOMContentLoaded ms | kB | "
        "JSON API ms | page / JSON |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (page, json_ms) in rows.items():
        chart = f"{page['fcp_ms']:.0f} ms" if page["chart"] else "none"
        print(
            f"| {name} | {page['html_ms']:.0f} | {page['fcp_ms']:.0f} | {chart} | "
            f"{page['dom_ms']:.0f} | {page['bytes'] / 1024:.0f} | {json_ms:.1f} | "
            f"{page['fcp_ms'] / json_ms:.1f}× |"
        )


if __name__ == "__main__":
    main()

"""GET /metrics: Prometheus's text format, whose values move as the service works."""

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.api import metrics
from tests.conftest import SQLITE_ONLY, TINY_SPEC, api_process


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, parsed by prometheus_client's own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def fresh_reads(monkeypatch):
    """Every scrape reads the database, instead of reusing the last second's read."""
    monkeypatch.setattr(metrics, "DATABASE_READ_SECONDS", 0.0)


def test_a_post_raises_the_queued_gauge_and_a_finished_run_the_epoch_histogram(
    client, drain, dataset, fresh_reads
):
    before = scrape(client)
    assert value(before, "convlab_experiments", status="queued") == 0
    created = client.post("/experiments", json=TINY_SPEC).json()
    queued = scrape(client)
    assert value(queued, "convlab_experiments", status="queued") == 1
    assert value(queued, "convlab_queue_oldest_wait_seconds") >= 0

    drain()
    after = scrape(client)
    device = client.get(f"/experiments/{created['id']}").json()["device"]
    assert value(after, "convlab_experiments", status="queued") == 0
    assert value(after, "convlab_experiments", status="succeeded") == 1
    assert value(after, "convlab_epoch_duration_seconds_count", device=device) == 2
    assert value(after, "convlab_epoch_duration_seconds_bucket", device=device, le="+Inf") == 2
    assert value(after, "convlab_epoch_duration_seconds_sum", device=device) > 0
    assert value(after, "convlab_queue_wait_seconds_count") == 1
    assert value(after, "convlab_attempts_total", outcome="succeeded") == 1
    assert value(after, "convlab_retries_total") == 0

    # The first request loads the model, the second finds it; each is one model call.
    images = dataset.test_images[:3].tolist()
    for _ in range(2):
        assert client.post("/predict", json={"instances": images}).status_code == 200
    served = scrape(client)
    for result, count in (("miss", 1), ("hit", 1)):
        moved = value(served, "convlab_model_cache_lookups_total", result=result) - value(
            after, "convlab_model_cache_lookups_total", result=result
        )
        assert moved == count
    calls = value(served, "convlab_model_call_images_count") - value(
        after, "convlab_model_call_images_count"
    )
    images_sum = value(served, "convlab_model_call_images_sum") - value(
        after, "convlab_model_call_images_sum"
    )
    assert (calls, images_sum) == (2, 6)


@SQLITE_ONLY
def test_requests_count_by_route_template_and_status(client):
    before = scrape(client)
    client.get("/experiments/12345")
    for path in ("/nothing/here", "/no/such/path/either"):
        client.get(path)
    after = scrape(client)
    missing = {"method": "GET", "route": "/experiments/{experiment_id}", "status": "404"}
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    for labels, count in ((missing, 1), (unmatched, 2)):
        name = "convlab_http_requests_total"
        assert value(after, name, **labels) - value(before, name, **labels) == count
    # Two random paths made no series of their own.
    assert not any("/nothing" in str(labels) for _, labels in after)
    timed = {"method": "GET", "route": "/experiments/{experiment_id}"}
    name = "convlab_http_request_duration_seconds_count"
    assert value(after, name, **timed) - value(before, name, **timed) == 1


@SQLITE_ONLY
def test_database_values_are_read_at_most_once_a_second(client, monkeypatch):
    monkeypatch.setattr(metrics, "DATABASE_READ_SECONDS", 3600.0)
    assert value(scrape(client), "convlab_experiments", status="queued") == 0
    client.post("/experiments", json=TINY_SPEC)
    # Within the window the last read answers; past it, the database does.
    assert value(scrape(client), "convlab_experiments", status="queued") == 0
    monkeypatch.setattr(metrics, "DATABASE_READ_SECONDS", 0.0)
    assert value(scrape(client), "convlab_experiments", status="queued") == 1


@SQLITE_ONLY
def test_a_scrape_during_a_read_answers_from_the_last_one(client, fresh_reads):
    assert value(scrape(client), "convlab_experiments", status="queued") == 0
    client.post("/experiments", json=TINY_SPEC)
    cache = client.app.state.database_metrics
    # As if another scrape's read were waiting for a database slot.
    client.portal.call(cache.lock.acquire)
    try:
        assert value(scrape(client), "convlab_experiments", status="queued") == 0
    finally:
        client.portal.call(cache.lock.release)
    assert value(scrape(client), "convlab_experiments", status="queued") == 1


@SQLITE_ONLY
def test_several_api_processes_add_their_counts_up(settings, tmp_path):
    log = tmp_path / "api.log"
    with (
        api_process(settings.database_url, log, API_WORKERS="2") as base,
        httpx.Client(base_url=base, timeout=10) as http,
    ):
        before = health_count(scrape(http))
        for _ in range(40):  # New connections: both processes answer some.
            assert httpx.get(f"{base}/health", timeout=10).status_code == 200
        # Whichever process answers a scrape reports all 40.
        totals = {health_count(scrape(http)) - before for _ in range(6)}
    assert totals == {40.0}


def health_count(samples) -> float:
    labels = {"method": "GET", "route": "/health", "status": "200"}
    return value(samples, "convlab_http_requests_total", **labels)

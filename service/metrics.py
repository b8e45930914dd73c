"""The API process's own Prometheus metrics: HTTP traffic, model calls and the model cache.

What the database knows (experiments, workers, epochs, attempts) is read from its rows at
scrape time instead (`service/database_metrics.py`): workers on other machines write there, and
any API process can report it.

With several API processes (API_WORKERS > 1) the `api` command sets PROMETHEUS_MULTIPROC_DIR
before they start, so prometheus_client keeps these values in files the scrape adds up.
"""

import os

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
IMAGE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

HTTP_REQUESTS = Counter(
    "convlab_http_requests",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "convlab_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by method and route template",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
MODEL_CALL_SECONDS = Histogram(
    "convlab_model_call_seconds",
    "Time of one model call on a (micro-batched) batch of images",
    buckets=LATENCY_BUCKETS,
)
MODEL_CALL_IMAGES = Histogram(
    "convlab_model_call_images",
    "Images per model call: how much the micro-batcher gathered",
    buckets=IMAGE_BUCKETS,
)
MODEL_CACHE_LOOKUPS = Counter(
    "convlab_model_cache_lookups",
    "Model look-ups by the serving path: a hit answers from memory, a miss loads the model",
    ["result"],
)

EVENT_STREAMS = Gauge(
    "convlab_event_streams_open",
    "Event streams open now (summed over the live API processes)",
    multiprocess_mode="livesum",
)


def process_metrics() -> bytes:
    """This process's metrics, or every API process's when they share a multiprocess folder."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return generate_latest(registry)

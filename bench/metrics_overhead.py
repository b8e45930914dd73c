"""What counting and timing every request for GET /metrics costs a request.

Calls the real app's ASGI stack in process (no network, so nothing else hides the cost) for
GET /health and for a path no route matches (a 404), alternating between the app with its
HttpMetrics middleware and the same app built without it, and reports µs per request and
their ratio.

    .venv/bin/python bench/metrics_overhead.py [--requests 20000]
"""

import argparse
import asyncio
import platform
import tempfile
import time
from pathlib import Path

from common import ROOT  # noqa: F401  (puts the repository on sys.path)

from service.api import create_app
from service.api.metrics import HttpMetrics
from service.settings import Settings

ROUNDS = 5


def build(with_metrics: bool, database_url: str):
    app = create_app(Settings(database_url=database_url))
    if not with_metrics:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not HttpMetrics]
    app.state.workers_alive = 1  # What the lifespan's watcher would have counted.
    return app


async def call(app, path: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    status = 0

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def microseconds_per_request(app, path: str, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        await call(app, path)
    return (time.perf_counter() - started) / requests * 1e6


async def main(requests: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        apps = {"without": build(False, url), "with": build(True, url)}
        for app in apps.values():
            assert await call(app, "/health") == 200  # Builds the middleware stack.
        print(f"machine: {platform.machine()}, {platform.python_version()}, {requests} requests")
        print("| request | without metrics µs | with metrics µs | ratio |")
        print("|---|---|---|---|")
        for path in ("/health", "/metrics-bench-404"):
            best = {name: float("inf") for name in apps}
            for _ in range(ROUNDS):  # Alternate, and keep each one's best round.
                for name, app in apps.items():
                    spent = await microseconds_per_request(app, path, requests)
                    best[name] = min(best[name], spent)
            ratio = best["with"] / best["without"]
            print(f"| GET {path} | {best['without']:.1f} | {best['with']:.1f} | ×{ratio:.3f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    asyncio.run(main(parser.parse_args().requests))

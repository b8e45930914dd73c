"""Simultaneous POST /experiments, released by a barrier, with GETs alongside.

For 10, 50 and 200 writers on SQLite and on PostgreSQL: the latency of the POSTs (p50, p99),
the count of each status, whether every 202 has exactly one row (and no row lacks a 202), and
the slowest /health answer during the burst. Bounded: each burst sends its POSTs once and 200
GETs, to 127.0.0.1 only.

    .venv/bin/python bench/burst.py [--writers 10 50 200]
"""

import argparse
import contextlib
import multiprocessing
import multiprocessing.synchronize
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx

SPEC = {"conv_layers": 1, "filters": 4, "epochs": 1, "train_samples": 64, "batch_size": 32}
GET_THREADS = 4
HEALTH_INTERVAL_SECONDS = 0.02
REQUEST_TIMEOUT_SECONDS = 60


@dataclass
class Burst:
    """What one burst saw."""

    post_statuses: Counter = field(default_factory=Counter)  # "no answer" for a timeout.
    get_statuses: Counter = field(default_factory=Counter)
    post_seconds: list[float] = field(default_factory=list)
    created_ids: list[int] = field(default_factory=list)
    # 429s and 503s that did not say when to retry.
    without_retry_after: int = 0
    health_seconds: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.post_seconds)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_burst(base: str, *, writers: int, gets: int, headers: dict | None = None) -> Burst:
    """Release `writers` POSTs at once while GET threads send `gets` requests in all."""
    result = Burst()
    barrier = threading.Barrier(writers + GET_THREADS, timeout=REQUEST_TIMEOUT_SECONDS)
    done = multiprocessing.get_context("spawn").Event()

    def post() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS) as http:
            http.get("/health")  # Connect before the barrier: the burst hits the app at once.
            barrier.wait()
            started = time.perf_counter()
            try:
                response = http.post("/experiments", json=SPEC)
            except httpx.TransportError:
                response = None  # No answer within REQUEST_TIMEOUT_SECONDS.
            elapsed = time.perf_counter() - started
        with result.lock:
            result.post_statuses[response.status_code if response else "no answer"] += 1
            result.post_seconds.append(elapsed)
            if response is None:
                return
            if response.status_code == 202:
                result.created_ids.append(response.json()["id"])
            elif response.status_code in (429, 503) and "retry-after" not in response.headers:
                result.without_retry_after += 1

    def get() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS) as http:
            barrier.wait()
            for _ in range(gets // GET_THREADS):
                try:
                    status = http.get("/experiments", params={"limit": 20}).status_code
                except httpx.TransportError:
                    status = "no answer"
                with result.lock:
                    result.get_statuses[status] += 1

    threads = [threading.Thread(target=post) for _ in range(writers)]
    threads += [threading.Thread(target=get) for _ in range(GET_THREADS)]
    # In a process of its own: in this one, the burst's threads would delay its own timing.
    context = multiprocessing.get_context("spawn")
    answers = context.Queue()
    prober = context.Process(target=probe_health, args=(base, done, answers))
    prober.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    result.health_seconds = answers.get(timeout=REQUEST_TIMEOUT_SECONDS)
    prober.join()
    return result


def probe_health(base: str, done: "multiprocessing.synchronize.Event", answers) -> None:
    """GET /health every few milliseconds until `done`; put the list of latencies."""
    latencies = []
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_SECONDS) as http:
        while not done.is_set():
            started = time.perf_counter()
            # A health check that fails counts as slow as it took.
            with contextlib.suppress(httpx.HTTPError):
                http.get("/health").raise_for_status()
            latencies.append(time.perf_counter() - started)
            done.wait(HEALTH_INTERVAL_SECONDS)
    answers.put(latencies)


def _postgres_admin_url() -> str:
    url = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextmanager
def _postgres_database() -> Iterator[str]:
    """A new database on the local PostgreSQL server, dropped afterwards."""
    import psycopg

    admin_url = _postgres_admin_url()
    name = f"convlab_burst_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        server = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def stored_ids(base: str, headers: dict | None = None) -> set[int]:
    """The ids of every experiment the API lists."""
    ids: set[int] = set()
    while page := httpx.get(
        f"{base}/experiments", params={"limit": 100, "offset": len(ids)}, headers=headers
    ).json()["items"]:
        ids |= {item["id"] for item in page}
    return ids


def measure(database_url: str, writers: list[int], gets: int) -> list[str]:
    from common import ROOT, free_port, wait_healthy

    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "PORT": str(port), "MAX_QUEUED": "100000"}
    subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=ROOT, env=env, check=True)
    api = subprocess.Popen(
        [sys.executable, "-m", "service", "api"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        wait_healthy(base, api)
        for count in writers:
            before = stored_ids(base)
            burst = run_burst(base, writers=count, gets=gets)
            stored = stored_ids(base) - before
            counts = sorted(burst.post_statuses.items(), key=str)
            statuses = ", ".join(f"{status}×{n}" for status, n in counts)
            rows.append(
                f"| {database_url.split(':')[0].split('+')[0]} | {count} | "
                f"{statistics.median(burst.post_seconds) * 1000:.0f} | "
                f"{burst.percentile(0.99) * 1000:.0f} | {statuses} | "
                f"{dict(burst.get_statuses)} | {stored == set(burst.created_ids)} | "
                f"{max(burst.health_seconds) * 1000:.0f} |"
            )
            print(rows[-1], flush=True)
    finally:
        api.terminate()
        api.wait()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--gets", type=int, default=200)
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        "| database | simultaneous POSTs | p50 ms | p99 ms | POST statuses | GET statuses "
        "| rows are the 202s | slowest /health ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        measure(f"sqlite:///{Path(directory) / 'burst.db'}", args.writers, args.gets)
    with _postgres_database() as url:
        measure(url, args.writers, args.gets)


if __name__ == "__main__":
    main()

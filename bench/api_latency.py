"""GET /experiments/{id} latency with and without a training run, and with event streams open.

Starts the API on a fresh SQLite database, measures sequential GET requests for --seconds
(idle), then with --streams event streams open on the experiment, then starts a worker training
the full data set and measures again, once with the training process at normal priority
(WORKER_NICE=0), once niced (WORKER_NICE=10, the default), and once niced with the streams open
(they then carry its progress). Bounded by --seconds per phase.

    .venv/bin/python bench/api_latency.py [--seconds 15]
"""

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
from common import ROOT, api_server

LONG_RUN = {"name": "load", "conv_layers": 2, "filters": 32, "epochs": 50, "device": "cpu"}


def measure(http: httpx.Client, path: str, seconds: float) -> dict:
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(latencies) < 100_000:
        started = time.perf_counter()
        http.get(path).raise_for_status()
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.01)  # A poller, not a load test.
    latencies.sort()
    return {
        "count": len(latencies),
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99) - 1],
    }


@dataclass
class Streams:
    """Counts across the open streams: how many are open, and the events they have read."""

    open: int = 0
    events: int = 0


@contextlib.contextmanager
def event_streams(base: str, path: str, count: int) -> Iterator[Streams]:
    """`count` streams open on `path`/events, read on an event loop of their own, until exit."""
    streams = Streams()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def follow(http: httpx.AsyncClient) -> None:
        async with http.stream("GET", f"{path}/events") as response:
            response.raise_for_status()
            streams.open += 1
            if streams.open == count:
                ready.set()
            async for line in response.aiter_lines():
                streams.events += line.startswith("event:")

    async def run() -> None:
        limits = httpx.Limits(max_connections=count + 1)
        async with httpx.AsyncClient(base_url=base, timeout=None, limits=limits) as http:
            followers = [asyncio.create_task(follow(http)) for _ in range(count)]
            await stop.wait()
            for follower in followers:
                follower.cancel()
            await asyncio.gather(*followers, return_exceptions=True)

    stop = asyncio.Event()
    thread = threading.Thread(target=loop.run_until_complete, args=(run(),))
    thread.start()
    if not ready.wait(60):
        raise RuntimeError(f"only {streams.open} of {count} event streams opened")
    try:
        yield streams
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--streams", type=int, default=100)
    args = parser.parse_args()
    streams_phase = f"{args.streams} event streams open"
    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{Path(directory) / 'bench.db'}"}
        subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=ROOT, env=env, check=True)
        results = {}
        with api_server(env) as base, httpx.Client(base_url=base, timeout=30) as http:
            path = f"/experiments/{http.post('/experiments', json=LONG_RUN).json()['id']}"
            results["no training"] = measure(http, path, args.seconds)
            with event_streams(base, path, args.streams):
                results[f"no training, {streams_phase}"] = measure(http, path, args.seconds)
            for nice in ("0", "10"):
                worker = subprocess.Popen(
                    [sys.executable, "-m", "service", "worker", "--device", "cpu"],
                    cwd=ROOT,
                    env={**env, "WORKER_NICE": nice},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for _ in range(1200):
                    progress = http.get(path).json()["progress"]
                    if progress and progress["step"] > 0:
                        break
                    time.sleep(0.1)
                results[f"training, WORKER_NICE={nice}"] = measure(http, path, args.seconds)
                if nice == "10":
                    with event_streams(base, path, args.streams) as streams:
                        phase = f"training, WORKER_NICE={nice}, {streams_phase}"
                        results[phase] = measure(http, path, args.seconds)
                    print(f"the streams read {streams.events} events while training")
                worker.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                worker.send_signal(signal.SIGTERM)
                worker.wait(60)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; SQLite; sequential GETs")
    print("| phase | requests | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for phase, result in results.items():
        print(f"| {phase} | {result['count']} | {result['p50']:.2f} | {result['p99']:.2f} |")


if __name__ == "__main__":
    main()

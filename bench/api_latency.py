"""GET /experiments/{id} latency with and without a training run on the same machine.

Starts the API on a fresh SQLite database, measures sequential GET requests for --seconds
(idle), then starts a worker training the full data set and measures again, once with the
training process niced (WORKER_NICE=10, the default) and once without (WORKER_NICE=0).
Bounded by --seconds per phase.

    .venv/bin/python bench/api_latency.py [--seconds 15]
"""

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
from common import ROOT, free_port, wait_healthy

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{Path(directory) / 'bench.db'}",
            "PORT": str(port),
        }
        subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=ROOT, env=env, check=True)
        api = subprocess.Popen(
            [sys.executable, "-m", "service", "api"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        results = {}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                wait_healthy(f"http://127.0.0.1:{port}", api)
                path = f"/experiments/{http.post('/experiments', json=LONG_RUN).json()['id']}"
                results["no training"] = measure(http, path, args.seconds)
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
                    worker.send_signal(signal.SIGTERM)
                    time.sleep(0.5)
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(60)
        finally:
            api.terminate()
            api.wait(30)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; SQLite; sequential GETs")
    print("| phase | requests | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for phase, result in results.items():
        print(f"| {phase} | {result['count']} | {result['p50']:.2f} | {result['p99']:.2f} |")


if __name__ == "__main__":
    main()

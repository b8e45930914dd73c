"""Predictions under load: the service against FastAPI + `model.predict` per request.

In one run on this machine: train the study's 2-conv network through the service, export its
`.keras` file, start the service's API and the baseline (bench/baseline_server.py, same
model file), and drive both over loopback with wrk at 1, 8 and 32 concurrent connections,
sending real Fashion-MNIST test images as multipart PNG uploads and as JSON arrays. Every run
is bounded by --seconds. Each request carries one image, so requests/s = images/s. Then a
breakdown of the service's request time from its
Server-Timing header. Needs wrk (`apt-get install wrk`; `make bench` installs it).

    .venv/bin/python bench/predict_load.py [--seconds 5]
"""

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
from common import ROOT, free_port, train_through_service, wait_healthy
from PIL import Image

from service.datasets import load_fashion_mnist

BOUNDARY = "convlabbenchboundary"
IMAGES = 64
SPEC = {
    "name": "bench",
    "conv_layers": 2,
    "filters": 32,
    "epochs": 1,
    "train_samples": 10000,
    "seed": 3,
}

DONE = """
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "errors": %d, "p50_ms": %.3f, "p99_ms": %.3f}\\n',
    summary.requests, summary.duration / 1e6, errors,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{byte}" for byte in data) + '"'


def png(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_script(path: Path, content_type: str, bodies: list[bytes]) -> None:
    table = ",\n".join(lua_string(body) for body in bodies)
    path.write_text(
        f"bodies = {{\n{table}\n}}\n"
        "counter = 0\n"
        "request = function()\n"
        "  counter = counter % #bodies + 1\n"
        f'  local headers = {{["Content-Type"] = "{content_type}"}}\n'
        '  return wrk.format("POST", nil, headers, bodies[counter])\n'
        "end\n" + DONE
    )


def multipart(data: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def wait_idle(url: str) -> None:
    """Let a server finish the requests wrk left queued, so the next run starts clean."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        started = time.perf_counter()
        httpx.get(f"{url}/health", timeout=60)
        if time.perf_counter() - started < 0.05:
            return
        time.sleep(0.2)


def train_model(directory: Path) -> tuple[Path, dict]:
    body, model, env = train_through_service(SPEC, directory)
    path = directory / "model.keras"
    path.write_bytes(model)
    print(f"trained: test accuracy {body['test']['accuracy']:.3f}", flush=True)
    return path, env


def wrk(url: str, script: Path, connections: int, seconds: int) -> dict:
    output = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["rps"] = result["requests"] / result["seconds"]
    return result


def server_timing_breakdown(url: str, bodies: list[bytes], count: int = 300) -> dict:
    """Mean client latency and the server's own read/model split, one request at a time."""
    client_ms, read_ms, model_ms = [], [], []
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    with httpx.Client(timeout=10) as http:
        for index in range(count):
            started = time.perf_counter()
            response = http.post(
                f"{url}/predict", content=bodies[index % len(bodies)], headers=headers
            )
            client_ms.append((time.perf_counter() - started) * 1000)
            timing = dict(
                part.split(";dur=") for part in response.headers["server-timing"].split(", ")
            )
            read_ms.append(float(timing["read"]))
            model_ms.append(float(timing["model"]))
    return {
        "client": statistics.median(client_ms),
        "read": statistics.median(read_ms),
        "model": statistics.median(model_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--api-workers", type=int, default=2, help="the service's API_WORKERS")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")

    data = load_fashion_mnist()
    images = data.test_images[:IMAGES]
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        model_path, env = train_model(directory)
        png_bodies = [multipart(png(image)) for image in images]
        write_script(directory / "png.lua", f"multipart/form-data; boundary={BOUNDARY}", png_bodies)
        json_bodies = [json.dumps({"instances": [image.tolist()]}).encode() for image in images]
        write_script(directory / "json.lua", "application/json", json_bodies)

        service_port, baseline_port = free_port(), free_port()
        servers = {
            "baseline": subprocess.Popen(
                [
                    sys.executable,
                    "bench/baseline_server.py",
                    "--model",
                    str(model_path),
                    "--port",
                    str(baseline_port),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            "service": subprocess.Popen(
                [sys.executable, "-m", "service", "api"],
                cwd=ROOT,
                env={**env, "PORT": str(service_port)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        }
        urls = {
            "baseline": f"http://127.0.0.1:{baseline_port}",
            "service": f"http://127.0.0.1:{service_port}",
        }
        results = {}
        try:
            for name, url in urls.items():
                wait_healthy(url, servers[name])
                wrk(f"{url}/predict", directory / "png.lua", 4, 2)  # Warm-up: load, trace.
            for name, url in urls.items():
                for kind in ("png", "json"):
                    for connections in (1, 8, 32):
                        results[name, kind, connections] = result = wrk(
                            f"{url}/predict", directory / f"{kind}.lua", connections, args.seconds
                        )
                        print(name, kind, connections, result, flush=True)
                        wait_idle(url)
            breakdown = server_timing_breakdown(urls["service"], png_bodies)
        finally:
            for process in servers.values():
                process.terminate()
                process.wait(30)

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; wrk on the same machine; "
        f"service API_WORKERS={args.api_workers}, baseline 1 process"
    )
    print(
        "| input | clients | baseline req/s | service req/s | ratio | baseline p50 / p99 ms | "
        "service p50 / p99 ms | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("png", "json"):
        for connections in (1, 8, 32):
            base, service = (
                results["baseline", kind, connections],
                results["service", kind, connections],
            )
            print(
                f"| {kind} | {connections} | {base['rps']:.0f} | {service['rps']:.0f} | "
                f"{service['rps'] / base['rps']:.1f}× | "
                f"{base['p50_ms']:.1f} / {base['p99_ms']:.1f} | "
                f"{service['p50_ms']:.2f} / {service['p99_ms']:.2f} | "
                f"{base['errors']} / {service['errors']} |"
            )
    http_ms = breakdown["client"] - breakdown["read"] - breakdown["model"]
    print(
        f"\nservice, one PNG at a time (medians): client {breakdown['client']:.2f} ms = "
        f"reading+decoding {breakdown['read']:.2f} ms + batching+model {breakdown['model']:.2f} ms "
        f"+ HTTP, routing and JSON {http_ms:.2f} ms"
    )


if __name__ == "__main__":
    main()

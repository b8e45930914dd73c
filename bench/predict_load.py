"""Predictions under load: the service against FastAPI + `model.predict` per request.

In one run on this machine: train the study's 2-conv network through the service, export its
`.keras` file, start the baseline (bench/baseline_server.py, same model file) and then the
service's API, and drive each over loopback with wrk at 1, 8 and 32 concurrent connections,
sending real Fashion-MNIST test images as multipart PNG uploads and as JSON arrays. Every run
is bounded by --seconds. Each request carries one image, so requests/s = images/s. Then the
service's Open Inference Protocol route (/v2/models/latest/infer) with binary and with JSON
tensors, one image and 64 images a request, beside the model's own compiled-call throughput
on 64-image batches (`predict_on_batch` in a process of its own with the service's thread
setting, no HTTP). Then, at 32 connections: the service with batching off and with the model
given every core (what two of its settings change), how many images a request's model call
held, and a breakdown of one request's time from the service's Server-Timing header.
Needs wrk (`apt-get install wrk`; `make bench` installs it).

    .venv/bin/python bench/predict_load.py [--seconds 5] [--api-workers 1]
"""

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
from common import ROOT, free_port, train_through_service, wait_healthy
from PIL import Image

from service.datasets import load_fashion_mnist

BOUNDARY = "convlabbenchboundary"
IMAGES = 64
# Images per Open Inference Protocol request.
OIP_BATCHES = (1, 64)
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


# Appended to a request script: counts the images each answer's model call held.
BATCH_SIZES = """
threads = {}
setup = function(thread) table.insert(threads, thread) end
answers, shared = 0, 0
response = function(status, headers, body)
  local size = tonumber(string.match(headers["server-timing"] or "", "batch of (%d+)"))
  if size then answers, shared = answers + 1, shared + size end
end
done = function(summary, latency, requests)
  local total, images = 0, 0
  for _, thread in ipairs(threads) do
    total, images = total + thread:get("answers"), images + thread:get("shared")
  end
  io.write(string.format('{"answers": %d, "mean_batch": %.2f}\\n', total, images / total))
end
"""

# What two of the service's settings are worth: each row runs the service with one changed.
VARIANTS = {
    "batching off (BATCH_WAIT_SECONDS=0)": {"BATCH_WAIT_SECONDS": "0"},
    "model on every core (INFERENCE_THREADS=0)": {"INFERENCE_THREADS": "0"},
}


def lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{byte}" for byte in data) + '"'


def png(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_script(
    path: Path,
    content_type: str,
    bodies: list[bytes],
    done: str = DONE,
    headers: dict[str, str] | None = None,
) -> None:
    table = ",\n".join(lua_string(body) for body in bodies)
    fields = "".join(f', ["{name}"] = "{value}"' for name, value in {**(headers or {})}.items())
    path.write_text(
        f"bodies = {{\n{table}\n}}\n"
        "counter = 0\n"
        "request = function()\n"
        "  counter = counter % #bodies + 1\n"
        f'  local headers = {{["Content-Type"] = "{content_type}"{fields}}}\n'
        '  return wrk.format("POST", nil, headers, bodies[counter])\n'
        "end\n" + done
    )


def oip_bodies(images: np.ndarray, per_request: int, binary: bool) -> tuple[list[bytes], dict]:
    """OIP inference requests of `per_request` UINT8 images each, and their extra headers."""
    bodies, header_length = [], None
    for start in range(0, len(images), per_request):
        batch = images[start : start + per_request]
        tensor = {"name": "images", "datatype": "UINT8", "shape": [len(batch), 28, 28, 1]}
        outputs = [{"name": "probabilities", "parameters": {"binary_data": binary}}]
        if binary:
            tensor["parameters"] = {"binary_data_size": batch.nbytes}
        else:
            tensor["data"] = batch.reshape(-1).tolist()
        header = json.dumps({"inputs": [tensor], "outputs": outputs}).encode()
        bodies.append(header + (batch.tobytes() if binary else b""))
        header_length = len(header)
    extra = {"Inference-Header-Content-Length": str(header_length)} if binary else {}
    return bodies, extra


def write_oip_scripts(scripts: Path, images: np.ndarray) -> None:
    for per_request in OIP_BATCHES:
        for binary in (True, False):
            bodies, headers = oip_bodies(images, per_request, binary)
            content_type = "application/octet-stream" if binary else "application/json"
            name = f"oip-{'binary' if binary else 'json'}-{per_request}.lua"
            write_script(scripts / name, content_type, bodies, headers=headers)


def model_only(model_path: Path, env: dict, seconds: int) -> float:
    """Images/s of the model's compiled call on 64-image batches, in a process of its own."""
    output = subprocess.run(
        [sys.executable, __file__, "--model-only", str(model_path), "--seconds", str(seconds)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    ).stdout
    return float(output.strip().splitlines()[-1])


def measure_model_only(model_path: Path, seconds: int) -> None:
    """Print the images/s of `predict_on_batch` on 64 test images, as the service calls it."""
    from service.ml.model import load_model_bytes
    from service.settings import get_settings
    from service.threads import limit_backend_threads

    limit_backend_threads(get_settings().inference_threads)
    model = load_model_bytes(model_path.read_bytes())
    pixels = (load_fashion_mnist().test_images[:IMAGES] / 255.0).astype(np.float32)
    batch = pixels[..., np.newaxis]
    for _ in range(20):
        model.predict_on_batch(batch)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict_on_batch(batch)
        calls += 1
    print(calls * IMAGES / (time.perf_counter() - started))


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
    if "requests" in result:
        result["rps"] = result["requests"] / result["seconds"]
    return result


@contextlib.contextmanager
def serving(command: list[str], env: dict, port: int, scripts: Path):
    """A server on `port`, warmed up: 32 connections for 3 s reach every API process, so
    each has loaded and traced the model before anything is measured."""
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        wrk(f"{url}/predict", scripts / "png.lua", 32, 3)
        wait_idle(url)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def load_grid(url: str, scripts: Path, seconds: int, connections: tuple[int, ...]) -> dict:
    results = {}
    for kind in ("png", "json"):
        for count in connections:
            results[kind, count] = wrk(f"{url}/predict", scripts / f"{kind}.lua", count, seconds)
            print(kind, count, results[kind, count], flush=True)
            wait_idle(url)
    return results


def oip_grid(url: str, scripts: Path, seconds: int, connections: tuple[int, ...]) -> dict:
    results = {}
    for per_request in OIP_BATCHES:
        for kind in ("binary", "json"):
            for count in connections:
                script = scripts / f"oip-{kind}-{per_request}.lua"
                result = wrk(f"{url}/v2/models/latest/infer", script, count, seconds)
                result["images_per_second"] = result["rps"] * per_request
                results[kind, per_request, count] = result
                print("oip", kind, per_request, count, result, flush=True)
                wait_idle(url)
    return results


def server_timing_breakdown(url: str, bodies: list[bytes], count: int = 300) -> dict:
    """Median client latency and the server's own read/model split, one request at a time."""
    client_ms, read_ms, model_ms = [], [], []
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    with httpx.Client(timeout=10) as http:
        for index in range(count):
            started = time.perf_counter()
            response = http.post(
                f"{url}/predict", content=bodies[index % len(bodies)], headers=headers
            )
            client_ms.append((time.perf_counter() - started) * 1000)
            timing = dict(re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]))
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
    parser.add_argument("--api-workers", type=int, default=1, help="the service's API_WORKERS")
    parser.add_argument("--model-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model_only is not None:
        measure_model_only(args.model_only, args.seconds)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")

    data = load_fashion_mnist()
    images = data.test_images[:IMAGES]
    grid = (1, 8, 32)
    with tempfile.TemporaryDirectory() as directory:
        scripts = Path(directory)
        model_path, env = train_model(scripts)
        png_bodies = [multipart(png(image)) for image in images]
        png_type = f"multipart/form-data; boundary={BOUNDARY}"
        write_script(scripts / "png.lua", png_type, png_bodies)
        write_script(scripts / "batches.lua", png_type, png_bodies, BATCH_SIZES)
        json_bodies = [json.dumps({"instances": [image.tolist()]}).encode() for image in images]
        write_script(scripts / "json.lua", "application/json", json_bodies)
        write_oip_scripts(scripts, images)

        port = free_port()
        baseline_command = [
            *(sys.executable, "bench/baseline_server.py"),
            *("--model", str(model_path), "--port", str(port)),
        ]
        with serving(baseline_command, env, port, scripts) as url:
            baseline = load_grid(url, scripts, args.seconds, grid)

        service_command = [sys.executable, "-m", "service", "api"]
        service_env = {**env, "PORT": str(port), "API_WORKERS": str(args.api_workers)}
        with serving(service_command, service_env, port, scripts) as url:
            service = load_grid(url, scripts, args.seconds, grid)
            oip = oip_grid(url, scripts, args.seconds, grid)
            batches = wrk(f"{url}/predict", scripts / "batches.lua", 32, args.seconds)
            wait_idle(url)
            breakdown = server_timing_breakdown(url, png_bodies)
        model_images_per_second = model_only(model_path, service_env, args.seconds)
        variants = {}
        for name, overrides in VARIANTS.items():
            with serving(service_command, {**service_env, **overrides}, port, scripts) as url:
                variants[name] = load_grid(url, scripts, args.seconds, (32,))

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
        for count in grid:
            base, ours = baseline[kind, count], service[kind, count]
            print(
                f"| {kind} | {count} | {base['rps']:.0f} | {ours['rps']:.0f} | "
                f"{ours['rps'] / base['rps']:.1f}× | "
                f"{base['p50_ms']:.1f} / {base['p99_ms']:.1f} | "
                f"{ours['p50_ms']:.2f} / {ours['p99_ms']:.2f} | "
                f"{base['errors']} / {ours['errors']} |"
            )
    print_oip(oip, service, grid, model_images_per_second)
    print("\n| service at 32 clients | png req/s | json req/s | png p50 / p99 ms |")
    print("|---|---|---|---|")
    for name, results in {"as configured": service, **variants}.items():
        png_result, json_result = results["png", 32], results["json", 32]
        print(
            f"| {name} | {png_result['rps']:.0f} | {json_result['rps']:.0f} | "
            f"{png_result['p50_ms']:.2f} / {png_result['p99_ms']:.2f} |"
        )
    print(
        f"\nat 32 clients (png), a request's model call held {batches['mean_batch']:.1f} "
        f"images on average ({batches['answers']} answers)"
    )
    http_ms = breakdown["client"] - breakdown["read"] - breakdown["model"]
    print(
        f"service, one PNG at a time (medians): client {breakdown['client']:.2f} ms = "
        f"reading+decoding {breakdown['read']:.2f} ms + batching+model {breakdown['model']:.2f} ms "
        f"+ HTTP, routing and JSON {http_ms:.2f} ms"
    )


def print_oip(oip: dict, service: dict, grid: tuple[int, ...], model_rate: float) -> None:
    print(
        f"\nmodel only, predict_on_batch on 64 images: {model_rate:.0f} images/s\n"
        "\n| OIP tensors | images / request | clients | req/s | images/s | of model only | "
        "p50 / p99 ms | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for per_request in OIP_BATCHES:
        for kind in ("binary", "json"):
            for count in grid:
                result = oip[kind, per_request, count]
                print(
                    f"| {kind} | {per_request} | {count} | {result['rps']:.0f} | "
                    f"{result['images_per_second']:.0f} | "
                    f"{result['images_per_second'] / model_rate:.0%} | "
                    f"{result['p50_ms']:.2f} / {result['p99_ms']:.2f} | {result['errors']} |"
                )
    for count in grid:
        single = oip["binary", 1, count]["rps"] / service["png", count]["rps"]
        print(f"one image, {count} clients: OIP binary / PNG upload = {single:.2f}×")


if __name__ == "__main__":
    main()

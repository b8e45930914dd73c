"""Seconds per epoch through the service against the same network in a plain Keras script.

Both train one spec on the same machine, taking turns (--repeats pairs), in this one run:
  baseline  a plain script: build the network, `model.fit(...)`, nothing else;
  service   POST /experiments to the API, a `python -m service worker` process trains it.
The steady-state epoch time is the median gap between consecutive epoch ends (epoch 1 also
pays for tracing, so it is left out): for the service that gap includes everything it adds
per epoch (the metrics row, heartbeats, progress). Epoch times on a shared 2-core machine
wander by ±20% from run to run, so the figure is the median over the pairs. Usage:
    .venv/bin/python bench/train_overhead.py [--epochs 4] [--train-samples 20000] [--repeats 3]
"""

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import ROOT, train_through_service

BASELINE = r"""
import json, sys, time
import keras
from service.datasets import load_fashion_mnist, to_model_input

spec = json.loads(sys.argv[1])
data = load_fashion_mnist()
images = to_model_input(data.train_images[: spec["train_samples"]])
labels = data.train_labels[: spec["train_samples"]]
keras.utils.set_random_seed(spec["seed"])
model = keras.Sequential(
    [keras.Input((28, 28, 1))]
    + [layer for _ in range(spec["conv_layers"]) for layer in (
        keras.layers.Conv2D(spec["filters"], 3, activation="relu"), keras.layers.MaxPooling2D(2))]
    + [keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
       keras.layers.Dense(10, activation="softmax")]
)
model.compile(optimizer=keras.optimizers.Adam(0.001), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
ends = []
stamp = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.time()))
start = time.time()
model.fit(images, labels, epochs=spec["epochs"], batch_size=spec["batch_size"], verbose=0,
          callbacks=[stamp])
print(json.dumps({"start": start, "ends": ends}))
"""


def steady_epoch_seconds(ends: list[float]) -> float:
    return statistics.median(b - a for a, b in itertools.pairwise(ends))


def run_baseline(spec: dict) -> list[float]:
    output = subprocess.run(
        [sys.executable, "-c", BASELINE, json.dumps(spec)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])["ends"]


def run_service(spec: dict, directory: Path) -> list[float]:
    body, _, _ = train_through_service(spec, directory)
    return [datetime.fromisoformat(e["finished_at"]).timestamp() for e in body["epochs"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-samples", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conv-layers", type=int, default=2)
    parser.add_argument("--filters", type=int, default=32)
    args = parser.parse_args()
    spec = {
        "name": "bench",
        "conv_layers": args.conv_layers,
        "filters": args.filters,
        "dense_units": [128],
        "epochs": args.epochs,
        "batch_size": 32,
        "train_samples": args.train_samples,
        "seed": 7,
        "device": "cpu",
    }
    started = time.time()
    pairs = []
    for _ in range(args.repeats):
        baseline = steady_epoch_seconds(run_baseline(spec))
        with tempfile.TemporaryDirectory() as directory:
            service = steady_epoch_seconds(run_service(spec, Path(directory)))
        pairs.append((baseline, service))
        print(f"pair: plain {baseline:.2f} s, service {service:.2f} s", flush=True)
    baseline = statistics.median(b for b, _ in pairs)
    service = statistics.median(s for _, s in pairs)
    ratio = service / baseline
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"spec: {args.conv_layers} conv x {args.filters} filters, dense 128, batch 32, "
        f"{args.train_samples} images, {args.epochs} epochs, {args.repeats} pairs"
    )
    print("| run | seconds per epoch (median over pairs of the median of epochs 2+) |")
    print("|---|---|")
    print(f"| plain Keras script | {baseline:.2f} |")
    print(f"| through the service | {service:.2f} |")
    print(f"| ratio service / plain | {ratio:.3f} ({(ratio - 1) * 100:+.1f}%) |")
    print(f"total bench time: {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()

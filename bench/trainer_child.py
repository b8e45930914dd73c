"""What a training child costs around its runs: leaving, and each small run, with and without
what the child does about Python's heap, in this one run.

  exit      CPU seconds of a process that imports Keras (TensorFlow) and leaves: through
            interpreter finalization (the baseline), and through `os._exit` as the child does.
  per run   seconds per small run (a new model, `service.ml.fit.train`, then the backend's
            state cleared, as the child does after each), in a process whose heap is left as
            Python leaves it (the baseline), and one that froze it after importing the backend.

    .venv/bin/python bench/trainer_child.py [--repeats 5] [--runs 10]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys

from common import ROOT, child_cpu_seconds, python_env

LEAVE = {
    "interpreter finalization": "import keras",
    "os._exit, as the child": "import os, keras; os._exit(0)",
}

RUNS = r"""
import gc, sys, time
from service.datasets import load_fashion_mnist
from service.heap import freeze_heap
from service.ml.backend import clear_backend_state
from service.ml.fit import train
from service.spec import ExperimentCreate

class Counter:
    value = 0

runs, frozen = int(sys.argv[1]), sys.argv[2] == "frozen"
dataset = load_fashion_mnist()
if frozen:
    freeze_heap()

def run(index):
    spec = ExperimentCreate(
        conv_layers=1, filters=8, dense_units=[16], epochs=1,
        train_samples=64 + 2 * index, batch_size=64,
    ).to_spec()
    train(spec, dataset, seed=1, device="cpu", send_epoch=lambda epoch: None,
          progress=(Counter(), Counter()))
    clear_backend_state()

run(0)  # The first run pays for what every later one reuses.
started = time.perf_counter()
for index in range(1, runs + 1):
    run(index)
print((time.perf_counter() - started) / runs)
"""


def seconds_per_run(runs: int, heap: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", RUNS, str(runs), heap],
        cwd=ROOT,
        env=python_env(),
        check=True,
        capture_output=True,
        text=True,
    )
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    exits: dict[str, list[float]] = {name: [] for name in LEAVE}
    runs: dict[str, list[float]] = {"as Python leaves it": [], "frozen": []}
    # Taking turns, so a slow moment of the machine falls on both sides.
    for _ in range(args.repeats):
        for name, code in LEAVE.items():
            exits[name].append(child_cpu_seconds(code))
        runs["as Python leaves it"].append(seconds_per_run(args.runs, "unfrozen"))
        runs["frozen"].append(seconds_per_run(args.runs, "frozen"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; medians of {args.repeats}")
    print("| a process with Keras loaded leaves by | CPU seconds, start to end |")
    print("|---|---|")
    for name, values in exits.items():
        print(f"| {name} | {statistics.median(values):.2f} |")
    baseline, fast = (statistics.median(values) for values in exits.values())
    print(f"| finalization's own cost | {baseline - fast:.2f} |")
    print(f"| ratio os._exit / finalization | {fast / baseline:.2f} |")
    print()
    print(f"| heap | seconds per small run ({args.runs} runs) |")
    print("|---|---|")
    for name, values in runs.items():
        print(f"| {name} | {statistics.median(values):.3f} |")
    unfrozen, frozen = (statistics.median(values) for values in runs.values())
    print(f"| ratio frozen / as Python leaves it | {frozen / unfrozen:.2f} |")


if __name__ == "__main__":
    main()

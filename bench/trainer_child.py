"""What a training child costs around its runs: starting, leaving, and each small run, with and
without what the child does about each, in this one run.

  import    CPU seconds of a process that imports Keras (TensorFlow) and leaves by `os._exit`:
            with every installed library Keras reaches for (the baseline), and with pandas,
            pyplot and JAX kept out (`keep_unused_libraries_out`) as the child does; the
            benchmark needs them installed, as the test set-up has them.
  exit      CPU seconds of a process that imports Keras (TensorFlow) and leaves: through
            interpreter finalization (the baseline), and through `os._exit` as the child does.
  per run   seconds per small run (`service.ml.fit.train` of one architecture, then the
            backend's state cleared, as the child does after each): a new model each run in a
            process whose heap is left as Python leaves it (the baseline), and in one that froze
            it after importing the backend; then, frozen too, on the compiled model kept from
            the run before (`CompiledModels`), as the child does.

    .venv/bin/python bench/trainer_child.py [--repeats 5] [--runs 10]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys

from common import ROOT, child_cpu_seconds, python_env

START = {
    "every library Keras finds": "import os, keras; os._exit(0)",
    "pandas, pyplot and JAX kept out, as the child": (
        "import os; from service.import_guard import keep_unused_libraries_out as keep;"
        " keep(); import keras; os._exit(0)"
    ),
}
LEAVE = {
    "interpreter finalization": "import keras",
    "os._exit, as the child": "import os, keras; os._exit(0)",
}

RUNS = r"""
import gc, sys, time
from service.datasets import load_fashion_mnist
from service.heap import freeze_heap
from service.ml.backend import clear_backend_state
from service.ml.compiled import CompiledModels
from service.ml.fit import train
from service.spec import ExperimentCreate

class Counter:
    value = 0

runs, heap = int(sys.argv[1]), sys.argv[2]
dataset = load_fashion_mnist()
models = CompiledModels() if heap == "frozen, compiled model kept" else None
if heap != "as Python leaves it":
    freeze_heap()

def run(index):
    spec = ExperimentCreate(
        conv_layers=1, filters=8, dense_units=[16], epochs=1,
        train_samples=64 + 2 * index, batch_size=64,
    ).to_spec()
    train(spec, dataset, seed=1, device="cpu", send_epoch=lambda epoch: None,
          progress=(Counter(), Counter()), models=models)
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


HEAPS = ("as Python leaves it", "frozen", "frozen, compiled model kept")


def print_table(heading: str, results: dict[str, list[float]], digits: int = 2) -> list[float]:
    """A Markdown table of each row's median; the medians, in order."""
    print(f"| {heading} |")
    print("|---|---|")
    medians = [statistics.median(values) for values in results.values()]
    for name, median in zip(results, medians, strict=True):
        print(f"| {name} | {median:.{digits}f} |")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    starts: dict[str, list[float]] = {name: [] for name in START}
    exits: dict[str, list[float]] = {name: [] for name in LEAVE}
    runs: dict[str, list[float]] = {name: [] for name in HEAPS}
    # Taking turns, so a slow moment of the machine falls on every side.
    for _ in range(args.repeats):
        for name, code in START.items():
            starts[name].append(child_cpu_seconds(code))
        for name, code in LEAVE.items():
            exits[name].append(child_cpu_seconds(code))
        for name in HEAPS:
            runs[name].append(seconds_per_run(args.runs, name))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; medians of {args.repeats}")
    every, kept_out = print_table(
        "a process importing Keras, with | CPU seconds, start to end", starts
    )
    print(f"| ratio kept out / every library | {kept_out / every:.2f} |")
    print()
    finalized, exited = print_table(
        "a process with Keras loaded leaves by | CPU seconds, start to end", exits
    )
    print(f"| finalization's own cost | {finalized - exited:.2f} |")
    print(f"| ratio os._exit / finalization | {exited / finalized:.2f} |")
    print()
    heading = f"heap, model | seconds per small run ({args.runs} runs)"
    unfrozen, frozen, kept = print_table(heading, runs, digits=3)
    print(f"| ratio frozen / as Python leaves it | {frozen / unfrozen:.2f} |")
    print(f"| ratio compiled model kept / frozen | {kept / frozen:.2f} |")


if __name__ == "__main__":
    main()

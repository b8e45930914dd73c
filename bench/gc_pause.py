"""How long a full garbage collection holds the GIL in an API process, unfrozen and frozen.

Builds the app as an API process does (TensorFlow and Keras imported), loads a trained model
into its cache as a prediction would, then times full collections (`gc.collect()`) before and
after `freeze_heap`. Under load the interpreter runs such a collection on its own every few
seconds; each one pauses every request in the process.

    .venv/bin/python bench/gc_pause.py [--repeats 5]
"""

import argparse
import gc
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from common import train_through_service
from predict_load import SPEC

from service.heap import freeze_heap, refreeze_heap
from service.serving.batching import batch_sizes
from service.serving.model_cache import ModelCache


def full_collection_us(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        _, model, _ = train_through_service(SPEC, Path(directory))
    cache = ModelCache(1, 10**9, warm_up_sizes=batch_sizes(64), on_load=refreeze_heap)
    cache.get(1, "sha", lambda: model)  # Freezes on load, as the API does.
    gc.unfreeze()
    unfrozen = full_collection_us(args.repeats)
    tracked = len(gc.get_objects())
    freeze_heap()
    frozen = full_collection_us(args.repeats)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {tracked:,} tracked objects")
    print("| heap | full collection, median µs |")
    print("|---|---|")
    print(f"| as Python leaves it | {unfrozen:,.0f} |")
    print(f"| after freeze_heap | {frozen:,.1f} |")
    print(f"| ratio frozen / unfrozen | {frozen / unfrozen:.6f} |")


if __name__ == "__main__":
    main()

"""The study this project comes from, as one POST /studies, beside the notebook's own figures.

Five networks (2 conv layers × 16, 32 or 64 filters; 1 and 3 conv layers × 32 filters), dense
128, 5 epochs, batch 32, all 60,000 training images, each trained `--repeats` times with seeds
0, 1, 2, … on the CPU by one real worker process. Prints each variant's parameters and test
accuracy (mean and 95% t-interval over the repeats) beside the notebook's, whether the
notebook's accuracy lies inside that interval, and the study's effects.

    .venv/bin/python bench/seed_study.py                 # the full study: about 20 min here
    .venv/bin/python bench/seed_study.py --train-samples 2000 --repeats 2   # a quick look
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT

# The notebook's figures: parameters exactly, test accuracy where it reported one.
NOTEBOOK = {
    (2, 16): (55_098, None),
    (2, 32): (113_386, 0.90),
    (2, 64): (243_786, None),
    (1, 32): (693_962, 0.9085),
    (3, 32): (24_330, 0.8658),
}


def study_body(repeats: int, train_samples: int | None) -> dict:
    base = {"epochs": 5, "batch_size": 32, "dense_units": [128], "device": "cpu"}
    if train_samples:
        base["train_samples"] = train_samples
    return {
        "name": "the origin notebook's study",
        "base": base,
        "variants": [{"conv_layers": layers, "filters": filters} for layers, filters in NOTEBOOK],
        "repeats": repeats,
    }


def run_study(body: dict, directory: Path) -> dict:
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.settings import Settings

    url = f"sqlite:///{directory / 'study.db'}"
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=ROOT, env=env, check=True)
    settings = Settings(database_url=url, allowed_hosts=["testserver"], _env_file=None)
    with TestClient(create_app(settings)) as client:
        created = client.post("/studies", json=body)
        assert created.status_code == 202, created.text
        study_url = created.headers["location"]
        worker = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "--device", "cpu", "--drain"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.monotonic()
        while worker.poll() is None:
            time.sleep(15)
            counts = client.get(study_url).json()["counts"]
            print(f"  {time.monotonic() - started:6.0f} s  {counts}", file=sys.stderr, flush=True)
        study = client.get(study_url).json()
        assert study["status"] == "finished", study["counts"]
        (directory / "learning-curves.png").write_bytes(
            client.get(f"{study_url}/learning-curves.png").content
        )
    return study


def interval(estimate: dict | None, digits: int = 4) -> str:
    if not estimate:
        return "n/a"
    mean = f"{estimate['mean']:.{digits}f}"
    if estimate["ci_low"] is None:
        return mean
    return f"{mean} ({estimate['ci_low']:.{digits}f} to {estimate['ci_high']:.{digits}f})"


def table(study: dict) -> list[str]:
    lines = [
        "| conv × filters | params (notebook) | params (measured) | test accuracy, mean (95% CI) "
        "| notebook | inside the CI? | s/epoch, mean (95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in study["variants"]:
        key = (variant["params"]["conv_layers"], variant["params"]["filters"])
        params, accuracy = NOTEBOOK[key]
        estimate = variant["test_accuracy"]
        inside = "n/a"
        if accuracy is not None and estimate and estimate["ci_low"] is not None:
            inside = "yes" if estimate["ci_low"] <= accuracy <= estimate["ci_high"] else "no"
        seconds = variant["seconds_per_epoch"]
        lines.append(
            f"| {key[0]} × {key[1]} | {params:,} | {variant['total_params']:,} "
            f"| {interval(estimate)} | {accuracy if accuracy is not None else '—'} | {inside} "
            f"| {interval(seconds, 1)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        started = time.monotonic()
        study = run_study(study_body(args.repeats, args.train_samples), Path(directory))
        minutes = (time.monotonic() - started) / 60
        print(f"study {study['id']}: {study['counts']['succeeded']} runs in {minutes:.1f} min\n")
        print("\n".join(table(study)))
        print("\nEffects:")
        for effect in study["effects"]:
            print(f"- {effect['verdict']}")
        mismatched = [
            v
            for v in study["variants"]
            if v["total_params"]
            != NOTEBOOK[(v["params"]["conv_layers"], v["params"]["filters"])][0]
        ]
        if mismatched:
            raise SystemExit(f"parameter counts differ from the notebook's: {mismatched}")


if __name__ == "__main__":
    main()

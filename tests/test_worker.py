"""Whole runs: POST, a worker trains, metrics and the model land in the database."""

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from service.models import EpochMetric, TrainedModel
from tests.conftest import BOTH_DATABASES, ROOT, submit


def start_worker(settings, *extra: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "worker", "--device", "cpu", *extra],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": settings.database_url,
            "WORKER_POLL_SECONDS": "0.1",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate, timeout: float = 60, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@BOTH_DATABASES
def test_worker_process_trains_a_posted_experiment_to_succeeded(client, session_factory):
    created = submit(client, name="tiny", validation_split=0.1)
    worker = start_worker(client.app.state.settings, "--drain")
    output, _ = worker.communicate(timeout=180)
    assert worker.returncode == 0, output

    body = client.get(f"/experiments/{created['id']}").json()
    assert body["status"] == "succeeded", body
    assert body["device"] == "CPU"
    assert body["attempts"] == 1
    assert body["started_at"] and body["finished_at"]
    assert body["progress"] is None
    assert [epoch["epoch"] for epoch in body["epochs"]] == [1, 2]
    for epoch in body["epochs"]:
        assert epoch["loss"] > 0 and 0 <= epoch["accuracy"] <= 1
        assert epoch["val_loss"] is not None and epoch["val_accuracy"] is not None
        assert epoch["seconds"] > 0 and epoch["ms_per_step"] > 0
    assert 0.3 < body["test"]["accuracy"] <= 1
    assert body["stopped_early"] is False
    assert body["model"]["size_bytes"] > 1000

    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(EpochMetric)) == 2
        stored = session.get(TrainedModel, created["id"])
        assert stored.keras_file[:2] == b"PK"  # A .keras file is a zip archive.


def test_stop_threshold_stops_early_and_says_why(client, drain):
    created = submit(client, epochs=5, stop={"metric": "loss", "threshold": 5.0})
    drain()
    body = client.get(f"/experiments/{created['id']}").json()
    assert body["status"] == "succeeded"
    assert len(body["epochs"]) == 1
    assert body["stopped_early"] is True
    assert body["stop_reason"].startswith("loss ") and "<= 5.0 after epoch 1" in body["stop_reason"]
    assert body["test"] is not None


def test_unreached_threshold_trains_every_epoch(client, drain):
    created = submit(client, epochs=2, stop={"metric": "accuracy", "threshold": 0.999})
    drain()
    body = client.get(f"/experiments/{created['id']}").json()
    assert len(body["epochs"]) == 2
    assert body["stopped_early"] is False and body["stop_reason"] is None


def test_a_failing_run_ends_failed_with_a_readable_error(client, drain, settings, tmp_path: Path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (broken / f"{stem}.gz").write_bytes(gzip.compress(b"not an idx file"))
    created = submit(client)
    drain(settings.model_copy(update={"fashion_mnist_dir": broken}))
    body = client.get(f"/experiments/{created['id']}").json()
    assert body["status"] == "failed"
    assert "is not an unsigned-byte IDX file" in body["error"]
    assert body["model"] is None and body["finished_at"]


def test_gpu_experiment_waits_for_a_gpu_worker(client, drain):
    gpu = submit(client, device="gpu")
    cpu = submit(client)
    drain()
    waiting = client.get(f"/experiments/{gpu['id']}").json()
    assert waiting["status"] == "queued"
    assert "waits for a GPU worker" in waiting["waiting_reason"]
    assert client.get(f"/experiments/{cpu['id']}").json()["status"] == "succeeded"


def test_sigterm_requeues_the_running_experiment_and_exits_zero(client):
    created = submit(client, epochs=50, train_samples=6000, batch_size=32)
    worker = start_worker(client.app.state.settings, WORKER_HEARTBEAT_SECONDS="0.2")

    def running_with_progress():
        body = client.get(f"/experiments/{created['id']}").json()
        return body if body["progress"] and body["progress"]["step"] > 0 else None

    body = wait_for(running_with_progress, timeout=120)
    assert body["status"] == "running"
    assert body["progress"]["epochs"] == 50 and body["progress"]["steps"] == 188

    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    body = client.get(f"/experiments/{created['id']}").json()
    assert body["status"] == "queued"
    assert body["epochs"] == [] and body["progress"] is None


def test_killed_worker_is_recovered_after_its_lease_and_finishes_once(client):
    created = submit(client, epochs=4, train_samples=3000, batch_size=16)
    lease = {"LEASE_SECONDS": "2", "WORKER_HEARTBEAT_SECONDS": "0.2"}
    doomed = start_worker(client.app.state.settings, **lease)

    def finished_an_epoch():
        return len(client.get(f"/experiments/{created['id']}").json()["epochs"]) >= 1

    wait_for(finished_an_epoch, timeout=120)
    doomed.kill()
    doomed.communicate()
    assert client.get(f"/experiments/{created['id']}").json()["status"] == "running"

    rescuer = start_worker(client.app.state.settings, "--drain", **lease)
    output, _ = rescuer.communicate(timeout=180)
    assert rescuer.returncode == 0, output
    body = client.get(f"/experiments/{created['id']}").json()
    assert body["status"] == "succeeded"
    assert body["attempts"] == 2
    assert [epoch["epoch"] for epoch in body["epochs"]] == [1, 2, 3, 4]

"""Whole runs through real worker processes: training, stopping, crashing, recovering."""

import gzip
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from service import registry
from service.models import EpochMetric, TrainedModel
from service.queue import Claim
from service.worker import TrainingWorker
from tests.conftest import POSTGRESQL_ONLY, ROOT, SQLITE_ONLY, submit, wait_for

# What these test is the worker's handling of its processes and signals. What it writes (a
# release, a failure, a spent attempt) is tested on both databases in tests/test_leases.py,
# and a worker process's claims, fencing and resumption below on both; each of these runs a
# real worker and training process for 10–25 s, so once is enough.
PROCESS_LIFECYCLE = SQLITE_ONLY

FAST = {"WORKER_POLL_SECONDS": "0.1", "WORKER_HEARTBEAT_SECONDS": "0.2", "LEASE_SECONDS": "2"}


def start_worker(settings, *extra: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service", "worker", "--device", "cpu", *extra],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": settings.database_url, **FAST, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def get(client, experiment: dict) -> dict:
    return client.get(f"/experiments/{experiment['id']}").json()


def epochs_done(client, experiment: dict, count: int):
    return lambda: len(get(client, experiment)["epochs"]) >= count


def test_worker_process_trains_a_posted_experiment_to_succeeded(client, session_factory):
    created = submit(client, name="tiny", validation_split=0.1)
    worker = start_worker(client.app.state.settings, "--drain")
    output, _ = worker.communicate(timeout=180)
    assert worker.returncode == 0, output

    body = get(client, created)
    assert body["status"] == "succeeded", body
    assert body["device"] == "CPU"
    assert [(a["number"], a["outcome"]) for a in body["attempts"]] == [(1, "succeeded")]
    assert body["started_at"] and body["finished_at"]
    assert body["progress"] is None and body["queue_position"] is None
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
    workers = client.get("/workers").json()
    assert len(workers) == 1 and workers[0]["alive"] is False and workers[0]["stopped_at"]


def test_stop_threshold_stops_early_and_says_why(client, drain):
    created = submit(client, epochs=5, stop={"metric": "loss", "threshold": 5.0})
    drain()
    body = get(client, created)
    assert body["status"] == "succeeded"
    assert len(body["epochs"]) == 1
    assert body["stopped_early"] is True
    assert body["stop_reason"].startswith("loss ") and "<= 5.0 after epoch 1" in body["stop_reason"]
    assert body["test"] is not None


def test_unreached_threshold_trains_every_epoch(client, drain):
    created = submit(client, epochs=2, stop={"metric": "accuracy", "threshold": 0.999})
    drain()
    body = get(client, created)
    assert len(body["epochs"]) == 2
    assert body["stopped_early"] is False and body["stop_reason"] is None


@PROCESS_LIFECYCLE
def test_a_failing_run_ends_failed_at_once_without_retry(client, drain, settings, tmp_path: Path):
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
    body = get(client, created)
    assert body["status"] == "failed"
    assert "is not an unsigned-byte IDX file" in body["error"]
    assert body["model"] is None and body["finished_at"]
    assert [a["outcome"] for a in body["attempts"]] == ["failed"]


def test_gpu_experiment_waits_for_a_gpu_worker(client, drain):
    gpu = submit(client, device="gpu")
    cpu = submit(client)
    drain()
    waiting = get(client, gpu)
    assert waiting["status"] == "queued"
    assert "no worker with a GPU is alive" in waiting["waiting_reason"]
    assert get(client, cpu)["status"] == "succeeded"


def test_several_worker_processes_claim_each_experiment_exactly_once(client):
    experiments = [submit(client, epochs=1, train_samples=64, batch_size=64) for _ in range(9)]
    workers = [start_worker(client.app.state.settings, "--drain") for _ in range(3)]
    for worker in workers:
        output, _ = worker.communicate(timeout=240)
        assert worker.returncode == 0, output
    bodies = [get(client, e) for e in experiments]
    assert [b["status"] for b in bodies] == ["succeeded"] * 9
    assert all(len(b["attempts"]) == 1 and len(b["epochs"]) == 1 for b in bodies)


@PROCESS_LIFECYCLE
def test_sigterm_finishes_the_epoch_requeues_without_spending_an_attempt(client):
    created = submit(client, epochs=50, train_samples=20000, batch_size=32)
    worker = start_worker(client.app.state.settings, SHUTDOWN_GRACE_SECONDS="60")

    def running_with_progress():
        body = get(client, created)
        return body if body["progress"] and body["progress"]["step"] > 0 else None

    body = wait_for(running_with_progress)
    assert body["status"] == "running"
    assert body["progress"]["epochs"] == 50 and body["progress"]["steps"] == 625

    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    body = get(client, created)
    assert body["status"] == "queued"
    assert len(body["epochs"]) >= 1  # The epoch under way was finished and kept.
    assert [a["outcome"] for a in body["attempts"]] == ["requeued"]

    # The next worker resumes it as attempt 2, the first one spent.
    resumed = start_worker(client.app.state.settings)
    wait_for(lambda: len(get(client, created)["attempts"]) == 2)
    wait_for(lambda: (get(client, created)["progress"] or {}).get("step", 0) > 0)
    resumed.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # Two signals sent at once may arrive as one.
    resumed.send_signal(signal.SIGTERM)  # A second signal stops the training at once.
    output, _ = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, output
    assert "stopping the training now" in output
    body = get(client, created)
    assert body["status"] == "queued"
    assert [a["outcome"] for a in body["attempts"]] == ["requeued", "requeued"]


@PROCESS_LIFECYCLE
def test_grace_period_ending_mid_epoch_releases_the_experiment(client):
    created = submit(client, epochs=3, train_samples=20000, batch_size=16)
    worker = start_worker(client.app.state.settings, SHUTDOWN_GRACE_SECONDS="0.5")
    wait_for(lambda: (get(client, created)["progress"] or {}).get("step", 0) > 0)
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    body = get(client, created)
    assert body["status"] == "queued" and body["epochs"] == []
    assert body["attempts"][0]["error"] == "the worker shut down before the epoch ended"


def test_killed_worker_is_resumed_from_its_last_epoch_by_another(client):
    created = submit(client, epochs=4, train_samples=3000, batch_size=16)
    doomed = start_worker(client.app.state.settings)
    wait_for(epochs_done(client, created, 1))
    doomed.kill()
    doomed.communicate()
    before = get(client, created)
    assert before["status"] == "running"
    kept = {e["epoch"]: e["finished_at"] for e in before["epochs"]}

    rescuer = start_worker(client.app.state.settings, "--drain")
    output, _ = rescuer.communicate(timeout=180)
    assert rescuer.returncode == 0, output
    assert f"resumes after epoch {max(kept)}" in output
    body = get(client, created)
    assert body["status"] == "succeeded"
    assert [(a["number"], a["outcome"]) for a in body["attempts"]] == [
        (1, "lost"),
        (2, "succeeded"),
    ]
    assert [epoch["epoch"] for epoch in body["epochs"]] == [1, 2, 3, 4]
    # The epochs of the first attempt are the same rows, not trained again.
    assert {e["epoch"]: e["finished_at"] for e in body["epochs"] if e["epoch"] in kept} == kept


def test_stalled_worker_cannot_write_after_takeover_and_stops_itself(client):
    created = submit(client, epochs=6, train_samples=3000, batch_size=16)
    stalled = start_worker(client.app.state.settings)
    wait_for(epochs_done(client, created, 1))
    stop_outside_a_transaction(stalled, client.app.state.settings.database_url, created["id"])
    rescuer = start_worker(client.app.state.settings)
    try:
        wait_for(lambda: len(get(client, created)["attempts"]) == 2)
        stalled.send_signal(signal.SIGCONT)
        wait_for(lambda: get(client, created)["status"] == "succeeded", timeout=180)
    finally:
        stalled.send_signal(signal.SIGCONT)
        for worker in (stalled, rescuer):
            worker.send_signal(signal.SIGTERM)
    stalled_output, _ = stalled.communicate(timeout=60)
    rescuer.communicate(timeout=60)
    # However it learns (a heartbeat, or a write its fence refused), it says so and stops.
    assert f"experiment {created['id']}: lease lost, stopping" in stalled_output
    body = get(client, created)
    assert [epoch["epoch"] for epoch in body["epochs"]] == [1, 2, 3, 4, 5, 6]
    assert body["attempts"][0]["outcome"] == "lost"
    assert body["attempts"][1]["outcome"] == "succeeded"
    assert body["attempts"][1]["worker_id"] != body["attempts"][0]["worker_id"]


def stop_outside_a_transaction(process: subprocess.Popen, database_url: str, row: int) -> None:
    """SIGSTOP the worker at a moment it holds no lock on the experiment.

    A process frozen inside a write transaction keeps its locks (SQLite's whole database,
    PostgreSQL's row) from everyone: that is the database's behaviour, not what the fencing
    test is about.
    """
    for _ in range(50):
        process.send_signal(signal.SIGSTOP)
        if _row_is_free(database_url, row):
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("never caught the worker outside a transaction")


def _row_is_free(database_url: str, row: int) -> bool:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(url.database, timeout=0.5, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            connection.close()
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as connection:
        try:
            connection.execute("SELECT id FROM experiments WHERE id = %s FOR UPDATE NOWAIT", [row])
            return True
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            connection.rollback()


@pytest.mark.serial
def test_cancel_running_stops_within_seconds_and_keeps_finished_epochs(client):
    created = submit(client, epochs=30, train_samples=2000, batch_size=16)
    worker = start_worker(client.app.state.settings)
    wait_for(epochs_done(client, created, 1))
    asked = time.monotonic()
    assert client.post(f"/experiments/{created['id']}/cancel").status_code == 202
    wait_for(lambda: get(client, created)["status"] == "cancelled", timeout=10)
    assert time.monotonic() - asked < 3
    body = get(client, created)
    assert 1 <= len(body["epochs"]) < 30
    assert [a["outcome"] for a in body["attempts"]] == ["cancelled"]
    assert client.post(f"/experiments/{created['id']}/cancel").status_code == 409
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output


@PROCESS_LIFECYCLE
def test_a_run_that_keeps_killing_its_training_process_fails_after_max_attempts(client):
    created = submit(client, epochs=20, train_samples=6000, batch_size=16)
    worker = start_worker(client.app.state.settings, MAX_ATTEMPTS="2")
    try:
        for attempt in (1, 2):
            wait_for(lambda a=attempt: len(get(client, created)["attempts"]) == a)
            wait_for(lambda: (get(client, created)["progress"] or {}).get("step", 0) > 0)
            trainer = wait_for(lambda: _child_of(worker.pid))
            os.kill(trainer, signal.SIGKILL)
        wait_for(lambda: get(client, created)["status"] == "failed")
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output
    body = get(client, created)
    assert "the training process died (exit code -9); gave up after 2 attempts" in body["error"]
    assert [a["outcome"] for a in body["attempts"]] == ["lost", "lost"]


def _child_of(pid: int) -> int | None:
    """The training child, not multiprocessing's resource tracker beside it."""
    found = subprocess.run(
        ["pgrep", "-P", str(pid), "-f", "spawn_main"], capture_output=True, text=True
    ).stdout.split()
    return int(found[0]) if found else None


# Serial: restarting the server would break every test running beside it.
@pytest.mark.serial
@POSTGRESQL_ONLY
def test_postgresql_restart_during_a_run_loses_nothing(client):
    created = submit(client, epochs=5, train_samples=3000, batch_size=16)
    worker = start_worker(client.app.state.settings, "--drain", LEASE_SECONDS="30")
    wait_for(epochs_done(client, created, 1))
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True
    )
    output, _ = worker.communicate(timeout=240)
    assert worker.returncode == 0, output
    body = get(client, created)
    assert body["status"] == "succeeded", output
    assert [epoch["epoch"] for epoch in body["epochs"]] == [1, 2, 3, 4, 5]
    assert [a["outcome"] for a in body["attempts"]] == ["succeeded"]


@pytest.mark.serial
def test_idle_worker_picks_up_a_new_experiment_within_a_second(client, backend):
    # On PostgreSQL only NOTIFY can wake a worker polling every 5 s this fast.
    poll = "5" if backend == "postgresql" else "0.5"
    worker = start_worker(client.app.state.settings, WORKER_POLL_SECONDS=poll)
    try:
        wait_for(lambda: any(w["alive"] for w in client.get("/workers").json()))
        time.sleep(1)  # Let it settle into its idle wait.
        posted = time.monotonic()
        created = submit(client)
        wait_for(lambda: get(client, created)["attempts"], interval=0.02)
        assert time.monotonic() - posted < 1.0
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)


class PidRecordingWorker(TrainingWorker):
    """Notes which training process ran each experiment."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.trainer_pids: list[int | None] = []

    def train(self, claim: Claim) -> bool:
        assert self.trainer is not None
        self.trainer_pids.append(self.trainer.pid)
        return super().train(claim)


def run_quick_experiments(client, settings, session_factory, caplog, count: int, **limit):
    """`count` one-batch experiments through an in-process worker with `limit` set; the pid
    of the training process that ran each."""
    experiments = [submit(client, epochs=1, train_samples=64, batch_size=64) for _ in range(count)]
    worker = PidRecordingWorker(settings.model_copy(update=limit), session_factory, device="cpu")
    with caplog.at_level(logging.INFO, logger="service.worker"):
        worker.run(drain=True)
    assert [get(client, e)["status"] for e in experiments] == ["succeeded"] * count
    return worker.trainer_pids


# The training process is the worker's own: nothing here depends on the database.
@SQLITE_ONLY
def test_worker_replaces_its_training_process_after_trainer_max_experiments(
    client, settings, session_factory, caplog
):
    first, second = run_quick_experiments(
        client, settings, session_factory, caplog, 2, trainer_max_experiments=1
    )
    assert first != second
    assert (
        f"training process {first} replaced by {second}: TRAINER_MAX_EXPERIMENTS (1) reached"
        in caplog.text
    )


@SQLITE_ONLY
def test_worker_replaces_its_training_process_once_it_holds_more_than_trainer_max_rss_bytes(
    client, settings, session_factory, caplog
):
    [first] = run_quick_experiments(
        client, settings, session_factory, caplog, 1, trainer_max_rss_bytes=1
    )
    replaced = re.search(
        rf"training process {first} replaced by (\d+): it holds (\d+) MiB", caplog.text
    )
    assert replaced, caplog.text
    assert int(replaced[1]) != first and int(replaced[2]) > 100
    assert "more than TRAINER_MAX_RSS_BYTES (1 bytes)" in caplog.text


def test_a_run_past_max_run_seconds_is_stopped_and_fails(client, drain, settings):
    created = submit(client, epochs=100, train_samples=6000, batch_size=16)
    started = time.monotonic()
    drain(settings.model_copy(update={"max_run_seconds": 2}))
    assert time.monotonic() - started < 30
    body = get(client, created)
    assert body["status"] == "failed"
    assert body["error"] == "ran past MAX_RUN_SECONDS (2 s)"
    assert [(a["outcome"], a["error"]) for a in body["attempts"]] == [
        ("failed", "ran past MAX_RUN_SECONDS (2 s)")
    ]
    assert len(body["epochs"]) < 100 and body["model"] is None


class DeafTrainerWorker(TrainingWorker):
    """Its training child never hears a request to stop, as if stuck inside one long batch."""

    def train(self, claim: Claim) -> bool:
        assert self.trainer is not None
        # The child watches the event it was started with; this one only the worker sees.
        self.trainer.stop_now = threading.Event()
        return super().train(claim)


@SQLITE_ONLY
def test_a_run_past_max_run_seconds_that_will_not_stop_is_killed(
    client, settings, session_factory, caplog
):
    created = submit(client, epochs=100, train_samples=6000, batch_size=16)
    worker = DeafTrainerWorker(
        settings.model_copy(update={"max_run_seconds": 1}), session_factory, device="cpu"
    )
    with caplog.at_level(logging.WARNING, logger="service.worker"):
        worker.run(drain=True)
    assert "the training did not stop, killing it" in caplog.text
    body = get(client, created)
    assert body["status"] == "failed"
    assert body["error"] == "ran past MAX_RUN_SECONDS (1 s)"


@SQLITE_ONLY
def test_an_idle_worker_heartbeats_on_its_interval_not_on_every_poll(
    settings, session_factory, monkeypatch, kept_trainers
):
    beats: list[float] = []
    heartbeat = registry.worker_heartbeat

    def counted(*args, **kwargs) -> None:
        beats.append(time.monotonic())
        heartbeat(*args, **kwargs)

    monkeypatch.setattr(registry, "worker_heartbeat", counted)
    idle = settings.model_copy(update={"worker_poll_seconds": 0.02, "worker_heartbeat_seconds": 1})
    worker = TrainingWorker(
        idle, session_factory, device="cpu", trainer_factory=lambda: kept_trainers(idle)
    )
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not beats:  # The training process starts first.
            assert time.monotonic() < deadline, "the worker never sent a heartbeat"
            time.sleep(0.05)
        time.sleep(1.5)  # About 75 polls.
    finally:
        worker.shutdown.set()
        thread.join(60)
    in_window = [beat for beat in beats if beat - beats[0] <= 1.5]
    assert 2 <= len(in_window) <= 3, len(in_window)

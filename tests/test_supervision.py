"""`python -m service up` keeps its worker running: one that dies is started again."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import ROOT, free_port, wait_for_api

# A worker starts in a few seconds, most of them the training process importing TensorFlow.
WORKER_START_TIMEOUT_SECONDS = 60


class Up:
    """A running `python -m service up` on a SQLite file of its own."""

    def __init__(self, database: Path) -> None:
        self.base = f"http://127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{database}",
            "PORT": self.base.rsplit(":", 1)[1],
            "WORKER_POLL_SECONDS": "0.1",
        }
        env.pop("FASHION_MNIST_DIR", None)
        self.worker_pids: set[int] = set()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "up"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def alive_worker(self, *, other_than: int | None = None) -> dict:
        """Wait for an alive worker (one whose pid is not `other_than`) and return it."""
        deadline = time.monotonic() + WORKER_START_TIMEOUT_SECONDS
        while True:
            workers = httpx.get(f"{self.base}/workers", timeout=10).json()
            alive = [w for w in workers if w["alive"] and w["pid"] != other_than]
            if alive:
                self.worker_pids.add(alive[0]["pid"])
                return alive[0]
            assert self.process.poll() is None, "service up exited"
            assert time.monotonic() < deadline, f"no new worker alive: {workers}"
            time.sleep(0.2)

    def stop(self, signum: signal.Signals) -> str:
        """Send `signum`, wait for the exit, and return everything it logged."""
        self.process.send_signal(signum)
        output, _ = self.process.communicate(timeout=60)
        return output


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    service = Up(tmp_path / "convlab.db")
    try:
        wait_for_api(service.base, service.process)
        yield service
    finally:
        # A failed test must not leave a worker behind, training for a deleted database.
        for pid in service.worker_pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        if service.process.poll() is None:
            service.process.kill()
            service.process.communicate()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_up_restarts_a_worker_that_was_killed(up):
    killed = up.alive_worker()
    os.kill(killed["pid"], signal.SIGKILL)
    replacement = up.alive_worker(other_than=killed["pid"])
    assert replacement["id"] != killed["id"]

    output = up.stop(signal.SIGINT)
    assert up.process.returncode == 0, output
    assert f"worker process {killed['pid']} exited with code -9; restarting it in 1 s" in output
    assert f"worker process {replacement['pid']} started" in output
    assert "Traceback" not in output
    assert gone(replacement["pid"])


def test_up_stops_its_worker_on_sigterm(up):
    worker = up.alive_worker()
    output = up.stop(signal.SIGTERM)
    assert up.process.returncode == 0, output
    assert f"worker {worker['id']} stopped" in output
    assert gone(worker["pid"])
    assert "restarting" not in output

"""`python -m service up`: migrations, the API and a worker, stopped cleanly by Ctrl-C."""

import os
import signal
import subprocess
import sys
import time

import httpx2 as httpx

from tests.conftest import ROOT, TINY_SPEC, free_port, wait_for_api


def test_up_migrates_serves_trains_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'fresh' / 'convlab.db'}",
        "PORT": str(port),
        "WORKER_POLL_SECONDS": "0.1",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "up"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_api(base, process)
        deadline = time.monotonic() + 120
        created = httpx.post(f"{base}/experiments", json=TINY_SPEC, timeout=10).json()
        while (
            httpx.get(f"{base}/experiments/{created['id']}", timeout=10).json()["status"]
            != "succeeded"
        ):
            assert time.monotonic() < deadline, "the worker never finished"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "experiment 1 succeeded" in output
    assert "stopped" in output.splitlines()[-1] and "worker" in output.splitlines()[-1]


def test_nonsense_settings_stop_every_command_with_one_clear_line(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "LEASE_SECONDS": "1"}
    for command in ("worker", "api", "migrate"):
        result = subprocess.run(
            [sys.executable, "-m", "service", command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            "invalid settings: WORKER_HEARTBEAT_SECONDS (1) must be shorter than "
            "LEASE_SECONDS (1), or every lease runs out"
        )
        assert "Traceback" not in result.stderr

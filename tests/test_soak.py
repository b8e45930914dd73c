"""SQLite shared by a real API server and several workers under mixed writes."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx2 as httpx

from tests.conftest import ROOT, SQLITE_ONLY, free_port, wait_for_api

# Not serial: its one rate (a loop a second across three clients that pause 0.05 s between
# loops) is a floor, not a measure, and the load of the tests beside it makes the lock
# contention it looks for likelier.
SOAK_SECONDS = float(os.environ.get("CONVLAB_SOAK_SECONDS", "20"))
TINY = {"conv_layers": 1, "filters": 4, "epochs": 2, "train_samples": 64, "batch_size": 32}


@SQLITE_ONLY
def test_api_and_workers_share_sqlite_without_database_is_locked(settings, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "PORT": str(port),
        "WORKER_POLL_SECONDS": "0.05",
        "WORKER_HEARTBEAT_SECONDS": "0.1",
        "MAX_QUEUED": "100000",  # The soak queues faster than its workers drain.
    }
    logs = [open(tmp_path / f"{name}.log", "w+") for name in ("api", "w1", "w2", "w3")]  # noqa: SIM115
    commands = [["api"]] + [["worker", "--device", "cpu"]] * 3
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "service", *command],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for command, log in zip(commands, logs, strict=True)
    ]
    base = f"http://127.0.0.1:{port}"
    statuses: list[int] = []
    created: list[int] = []
    lock = threading.Lock()
    try:
        wait_for_api(base, processes[0])

        def client_loop() -> None:
            end = time.monotonic() + SOAK_SECONDS
            with httpx.Client(base_url=base, timeout=30) as http:
                for _ in range(10_000):
                    if time.monotonic() > end:
                        return
                    response = http.post("/experiments", json=TINY)
                    answers = [response.status_code]
                    if response.status_code == 202:
                        experiment_id = response.json()["id"]
                        with lock:
                            created.append(experiment_id)
                        answers.append(http.get(f"/experiments/{experiment_id}").status_code)
                    answers.append(http.get("/experiments", params={"limit": 50}).status_code)
                    answers.append(http.get("/workers").status_code)
                    with lock:
                        statuses.extend(answers)
                    time.sleep(0.05)

        clients = [threading.Thread(target=client_loop) for _ in range(3)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        # The workers keep writing while the API reads, until a few runs have finished.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            page = httpx.get(f"{base}/experiments", params={"status": "succeeded"}, timeout=30)
            statuses.append(page.status_code)
            if page.json()["total"] >= 3:
                break
            time.sleep(0.5)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=90)

    output = ""
    for log in logs:
        log.seek(0)
        output += log.read()
        log.close()
    # At least one POST-and-three-GETs loop a second across the clients: the API kept
    # answering through the soak instead of stalling behind the workers' writes.
    assert len(created) >= SOAK_SECONDS
    assert set(statuses) <= {200, 202}, sorted(set(statuses))
    assert "database is locked" not in output
    assert "Traceback" not in output
    assert output.count(" succeeded") >= 3  # The workers trained while the API wrote.

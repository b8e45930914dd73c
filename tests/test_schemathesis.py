"""Schemathesis against a live API: no server error and no status the OpenAPI document lacks."""

import os
import subprocess
import sys

from tests.conftest import ROOT, SQLITE_ONLY, free_port, wait_for_api

KEY = "schemathesis-key-0123456789"
CONFIG = ROOT / "tests" / "schemathesis.toml"
# Bounded: about 25 examples per operation and phase (tests/schemathesis.toml).
RUN_TIMEOUT_SECONDS = 300


@SQLITE_ONLY
def test_schemathesis_finds_no_server_error_and_no_undocumented_status(database_url, tmp_path):
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "API_KEYS": KEY,
        "MAX_QUEUED": "20",  # Reached during the run, so the 429 path is exercised too.
    }
    with open(tmp_path / "api.log", "w+") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "service", "api"],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_api(base, api)
            run = subprocess.run(
                [
                    *(sys.executable, "-m", "schemathesis.cli"),
                    *("--config-file", str(CONFIG), "run", f"{base}/openapi.json"),
                    *("--checks", "all", "--workers", "1", "--request-timeout", "20"),
                    *("--header", f"Authorization: Bearer {KEY}"),
                    "--seed=1",
                ],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_SECONDS,
            )
        finally:
            api.terminate()
            api.wait(30)
        log.seek(0)
        server_log = log.read()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Traceback" not in server_log, server_log[-4000:]

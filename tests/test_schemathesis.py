"""Schemathesis against a live API: no server error and no status the OpenAPI document lacks."""

import subprocess
import sys

from tests.conftest import ROOT, SQLITE_ONLY, api_process

KEY = "schemathesis-key-0123456789"
CONFIG = ROOT / "tests" / "schemathesis.toml"
# Bounded: about 25 examples per operation and phase (tests/schemathesis.toml).
RUN_TIMEOUT_SECONDS = 300


@SQLITE_ONLY
def test_schemathesis_finds_no_server_error_and_no_undocumented_status(database_url, tmp_path):
    settings = {
        "API_KEYS": KEY,
        "MAX_QUEUED": "20",  # 20 is reached: 429s are tested too.
        # Generated ?wait= values would hold each request up to a minute.
        "LONG_POLL_MAX_SECONDS": "0.2",
        # An event stream of a queued experiment would stay open until the request timeout.
        "EVENT_STREAM_MAX_SECONDS": "0.2",
    }
    with api_process(database_url, tmp_path / "api.log", **settings) as base:
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
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]

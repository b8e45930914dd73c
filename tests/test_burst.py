"""Bursts of simultaneous writes against a real API process: clean answers, no lost rows."""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.burst import run_burst, stored_ids
from tests.conftest import ROOT, free_port, wait_for_api

# Timings or memory measured here: run alone (make test runs these after the rest).
pytestmark = pytest.mark.serial

WRITERS = 60
GETS = 200
HEALTH_LIMIT_SECONDS = 0.1
KEY = "burst-key-0123456789abcdef"


@contextmanager
def api_process(database_url: str, log_path: Path, **settings: str) -> Iterator[str]:
    """`python -m service api` on its own port; fails the test if it logged a traceback."""
    port = free_port()
    environment = {**os.environ, "DATABASE_URL": database_url, "PORT": str(port), **settings}
    with open(log_path, "w+") as log:
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
            yield base
        finally:
            api.terminate()
            api.wait(30)
        log.seek(0)
        assert "Traceback" not in log.read()


def test_a_burst_of_posts_gets_202s_or_clean_503s_and_every_202_is_one_row(database_url, tmp_path):
    with api_process(database_url, tmp_path / "api.log") as base:
        burst = run_burst(base, writers=WRITERS, gets=GETS)
        ids = stored_ids(base)

    assert set(burst.post_statuses) <= {202, 503}, burst.post_statuses
    assert set(burst.get_statuses) <= {200, 503}, burst.get_statuses
    assert burst.without_retry_after == 0
    assert sum(burst.post_statuses.values()) == WRITERS
    assert sum(burst.get_statuses.values()) == GETS
    assert sorted(burst.created_ids) == sorted(set(burst.created_ids)) == sorted(ids)
    assert burst.health_seconds, "/health was never asked"
    assert max(burst.health_seconds) < HEALTH_LIMIT_SECONDS, max(burst.health_seconds)


def test_a_burst_from_one_key_queues_exactly_max_queued(database_url, tmp_path):
    headers = {"Authorization": f"Bearer {KEY}"}
    with api_process(database_url, tmp_path / "api.log", API_KEYS=KEY, MAX_QUEUED="5") as base:
        burst = run_burst(base, writers=30, gets=0, headers=headers)
        ids = stored_ids(base, headers)
    assert burst.post_statuses == {202: 5, 429: 25}
    assert burst.without_retry_after == 0
    assert sorted(burst.created_ids) == sorted(ids)

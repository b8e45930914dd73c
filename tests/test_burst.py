"""A burst of simultaneous writes against a real API process: clean answers, no lost rows."""

import os
import subprocess
import sys

import httpx2 as httpx

from bench.burst import run_burst
from tests.conftest import ROOT, free_port, wait_for_api

WRITERS = 60
GETS = 200
HEALTH_LIMIT_SECONDS = 0.1


def stored_ids(base: str) -> list[int]:
    ids, offset = [], 0
    while page := httpx.get(f"{base}/experiments", params={"limit": 100, "offset": offset}).json()[
        "items"
    ]:
        ids += [item["id"] for item in page]
        offset += len(page)
    return ids


def test_a_burst_of_posts_gets_202s_or_clean_503s_and_every_202_is_one_row(database_url, tmp_path):
    port = free_port()
    environment = {**os.environ, "DATABASE_URL": database_url, "PORT": str(port)}
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
            burst = run_burst(base, writers=WRITERS, gets=GETS)
            ids = stored_ids(base)
        finally:
            api.terminate()
            api.wait(30)
        log.seek(0)
        assert "Traceback" not in log.read()

    assert set(burst.post_statuses) <= {202, 503}, burst.post_statuses
    assert set(burst.get_statuses) <= {200, 503}, burst.get_statuses
    assert sum(burst.post_statuses.values()) == WRITERS
    assert sum(burst.get_statuses.values()) == GETS
    assert sorted(burst.created_ids) == sorted(set(burst.created_ids)) == sorted(ids)
    assert burst.health_seconds, "/health was never asked"
    assert max(burst.health_seconds) < HEALTH_LIMIT_SECONDS, max(burst.health_seconds)

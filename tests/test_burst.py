"""Bursts of simultaneous writes against a real API process: clean answers, no lost rows."""

import pytest

from bench.burst import run_burst, stored_ids
from tests.conftest import api_process

WRITERS = 60
GETS = 200
HEALTH_LIMIT_SECONDS = 0.1
KEY = "burst-key-0123456789abcdef"


# Its /health latency is measured: run alone (make test runs it after the rest).
@pytest.mark.serial
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

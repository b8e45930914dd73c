"""GET /experiments/{id}?wait=: the answer comes when the status changes, not before."""

import threading
import time

from fastapi.testclient import TestClient

from service import queue
from service.api import create_app
from service.db import transaction
from tests.conftest import SQLITE_ONLY, submit


def cancel_later(session_factory, experiment_id: int, seconds: float) -> threading.Timer:
    """Cancel the queued experiment from another thread, as another client would."""

    def cancel() -> None:
        with transaction(session_factory) as session:
            queue.request_cancel(session, experiment_id)

    timer = threading.Timer(seconds, cancel)
    timer.start()
    return timer


def timed_get(client, path: str, **params) -> tuple[float, dict]:
    started = time.monotonic()
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return time.monotonic() - started, response.json()


def test_a_long_poll_answers_when_the_status_changes(client, session_factory):
    created = submit(client)
    timer = cancel_later(session_factory, created["id"], 0.6)
    took, body = timed_get(client, f"/experiments/{created['id']}", wait=20)
    timer.join()
    assert body["status"] == "cancelled"
    assert 0.5 <= took < 10  # Held until the change, then answered within a poll or so.


@SQLITE_ONLY
def test_without_a_change_it_answers_when_the_wait_is_over(client):
    created = submit(client)
    took, body = timed_get(client, f"/experiments/{created['id']}", wait=1.2)
    assert body["status"] == "queued" and 1.2 <= took < 6


@SQLITE_ONLY
def test_a_status_already_past_the_one_seen_or_final_answers_at_once(client):
    created = submit(client)
    path = f"/experiments/{created['id']}"
    # The client saw it running; it is queued now: that is news already.
    took, body = timed_get(client, path, wait=30, changed_from="running")
    assert body["status"] == "queued" and took < 5
    client.post(f"{path}/cancel")
    took, body = timed_get(client, path, wait=30)  # Ended: nothing more will change.
    assert body["status"] == "cancelled" and took < 5


@SQLITE_ONLY
def test_the_wait_is_capped_by_the_setting(settings):
    capped = settings.model_copy(update={"long_poll_max_seconds": 0.5})
    with TestClient(create_app(capped)) as client:
        created = submit(client)
        took, body = timed_get(client, f"/experiments/{created['id']}", wait=30)
    assert body["status"] == "queued" and 0.5 <= took < 5


@SQLITE_ONLY
def test_bad_waits_are_422_and_an_unknown_experiment_is_404_at_once(client):
    created = submit(client)
    path = f"/experiments/{created['id']}"
    assert client.get(path, params={"wait": 61}).status_code == 422
    assert client.get(path, params={"wait": -1}).status_code == 422
    refused = client.get(path, params={"wait": 5, "changed_from": "sleeping"})
    assert refused.status_code == 422 and "changed_from" in refused.text
    started = time.monotonic()
    assert client.get("/experiments/99999", params={"wait": 30}).status_code == 404
    assert time.monotonic() - started < 5

"""Event streams: a run's story from committed rows, resumable, bounded, across processes."""

import json
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fastapi.routing
import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text, update

import service.api.event_stream
import service.events
from service import queue
from service.api import create_app
from service.db import transaction
from service.events import Cursor, events_after
from service.models import Experiment, ExperimentStatus
from service.spec import ExperimentCreate
from tests.conftest import (
    POSTGRESQL_ONLY,
    SQLITE_ONLY,
    TINY_SPEC,
    start_api,
    submit,
    wait_for,
)


@dataclass
class Sse:
    event: str | None
    id: str | None
    data: Any
    at: float  # Seconds since the stream was opened.


def sse_items(lines: Iterable[str], started: float) -> Iterator[Sse | str]:
    """Events, and comment lines, as an EventSource sees them, each as soon as it is whole."""
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            yield line
        elif line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif fields:
            data = json.loads(fields["data"]) if "data" in fields else None
            yield Sse(fields.get("event"), fields.get("id"), data, time.monotonic() - started)
            fields = {}


def parse_sse(lines: Iterable[str]) -> tuple[list[Sse], list[str]]:
    items = list(sse_items(lines, time.monotonic()))
    return [i for i in items if isinstance(i, Sse)], [i for i in items if isinstance(i, str)]


def stream(client, path: str, **headers: str) -> list[Sse]:
    with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return parse_sse(response.iter_lines())[0]


def kept(events: list[Sse]) -> list[tuple[str | None, str | None, Any]]:
    """The events a resuming client must get again exactly: all but the unkept progress."""
    return [(e.event, e.id, e.data) for e in events if e.event != "progress"]


@pytest.fixture
def live_client(settings):
    # Streams read often, so a short run's progress shows between its epochs.
    with TestClient(create_app(settings.model_copy(update={"event_poll_seconds": 0.05}))) as client:
        yield client


def stream_then_start(client, path: str, start: threading.Thread) -> list[Sse]:
    """A whole stream, with `start` started once its first event has come: what the stream
    shows live, not what it replays, from then on."""
    events: list[Sse] = []
    with client.stream("GET", path) as response:
        assert response.status_code == 200, response.read()
        for item in sse_items(response.iter_lines(), time.monotonic()):
            if isinstance(item, Sse):
                events.append(item)
                if len(events) == 1:
                    start.start()
    return events


def test_a_run_streams_status_progress_each_epoch_and_done_and_resumes(live_client, drain):
    created = submit(live_client, epochs=3, train_samples=6000, validation_split=0.1)
    path = f"/experiments/{created['id']}/events"
    worker = threading.Thread(target=drain)
    try:
        # Training starts once the stream is open: a stream opened after the first epoch (a
        # loaded machine, a run on a kept compiled model) would replay it before any progress.
        events = stream_then_start(live_client, path, worker)
    finally:
        if worker.ident is not None:  # Started.
            worker.join()

    kinds = [event.event for event in events]
    statuses = [event.data["status"] for event in events if event.event == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert kinds[-2:] == ["status", "done"] and "progress" in kinds
    epochs = [event for event in events if event.event == "epoch"]
    assert [event.data["epoch"] for event in epochs] == [1, 2, 3]
    assert kinds.index("status", 1) < kinds.index("progress") < kinds.index("epoch")
    assert all(event.id for event in events if event.event in ("status", "epoch"))
    assert all(event.id is None for event in events if event.event in ("progress", "done"))
    final = live_client.get(f"/experiments/{created['id']}").json()
    assert events[-1].data == final and final["status"] == "succeeded"
    assert [e.data["loss"] for e in epochs] == [e["loss"] for e in final["epochs"]]

    # A client that lost the connection after the second epoch gets exactly the rest.
    resumed = stream(live_client, path, **{"Last-Event-ID": epochs[1].id})
    assert kept(resumed) == kept(events[events.index(epochs[1]) + 1 :])
    assert [e.event for e in resumed if e.event != "progress"] == ["epoch", "status", "done"]
    # One that comes after the end gets the history, then `done`; one past it just `done`.
    assert kept(stream(live_client, path)) == kept(events)
    assert kept(stream(live_client, path, **{"Last-Event-ID": events[-2].id})) == kept(events[-1:])


SMALL_STUDY = {
    "name": "two filter counts",
    "base": {**{k: v for k, v in TINY_SPEC.items() if k != "seed"}, "train_samples": 128},
    "grid": {"filters": [4, 8]},
    "repeats": 1,
}


@pytest.mark.parametrize("batch", [200, 2])
def test_a_study_stream_multiplexes_its_experiments_and_ends(client, batch, monkeypatch):
    # With reads of two events, the history comes in several reads, as a large study's does.
    monkeypatch.setattr(service.events, "BATCH", batch)
    monkeypatch.setattr(service.api.event_stream, "BATCH", batch)
    study = client.post("/studies", json=SMALL_STUDY).json()
    page = client.get("/experiments", params={"study_id": study["id"]}).json()
    ids = [item["id"] for item in page["items"]]
    threading.Timer(0.3, lambda: client.post(f"/studies/{study['id']}/cancel")).start()
    path = f"/studies/{study['id']}/events"
    events = stream(client, path)

    assert {e.data["experiment_id"] for e in events if e.event == "status"} == set(ids)
    for experiment_id in ids:
        own = [(e.event, e.data.get("status")) for e in events if _of(e, experiment_id)]
        assert own == [("status", "queued"), ("status", "cancelled"), ("done", "cancelled")]
    assert events[-1].event == "end" and events[-1].data["id"] == study["id"]
    assert events[-1].data["counts"]["cancelled"] == len(ids) == 2

    # A client whose last event was an experiment's end, but not its `done`, gets that first.
    first_end = next(e for e in events if e.event == "status" and e.data["status"] == "cancelled")
    resumed = stream(client, path, **{"Last-Event-ID": first_end.id})
    assert (resumed[0].event, resumed[0].data["id"]) == ("done", first_end.data["experiment_id"])
    assert kept(resumed[1:]) == kept(events[events.index(first_end) + 2 :])


def test_a_stream_of_several_experiments_carries_just_those_and_ends(client):
    first, second, other = submit(client), submit(client), submit(client)
    ids = sorted([first["id"], second["id"]])

    def cancel() -> None:
        for experiment_id in ids:
            client.post(f"/experiments/{experiment_id}/cancel")

    threading.Timer(0.3, cancel).start()
    events = stream(client, f"/events?experiment_id={ids[0]}&experiment_id={ids[1]}")
    assert {e.data["experiment_id"] for e in events if e.event == "status"} == set(ids)
    for experiment_id in ids:
        own = [(e.event, e.data.get("status")) for e in events if _of(e, experiment_id)]
        assert own == [("status", "queued"), ("status", "cancelled"), ("done", "cancelled")]
    assert not [e for e in events if _of(e, other["id"])]
    assert (events[-1].event, events[-1].data) == ("end", {"experiment_ids": ids})
    missing = client.get(f"/events?experiment_id={ids[0]}&experiment_id=424242")
    assert missing.status_code == 404 and "experiment 424242 does not exist" in missing.text
    assert client.get("/events").status_code == 422
    too_many = "&".join(f"experiment_id={n}" for n in range(1, 102))
    assert client.get(f"/events?{too_many}").status_code == 422


def _of(event: Sse, experiment_id: int) -> bool:
    if event.event == "end":
        return False
    return (event.data.get("experiment_id") or event.data.get("id")) == experiment_id


@POSTGRESQL_ONLY
def test_an_event_committed_before_an_older_transaction_waits_for_it(session_factory):
    """PostgreSQL can commit a later id first. A reader that took it would move its cursor past
    the earlier one, which would then never be sent; the reader waits for it instead."""
    with transaction(session_factory) as session:
        first = queue.enqueue(session, name="a", spec=_spec(), owner=None, max_queued=10).id

    def logged(after: Cursor) -> list[tuple[int, str]]:
        with session_factory() as session:
            found = events_after(session, [first, second], after)
        return [(event.experiment_id, event.data["status"]) for event in found]

    with session_factory() as older:
        older.execute(update(Experiment).where(Experiment.id == first).values(status="running"))
        with transaction(session_factory) as session:
            second = queue.enqueue(session, name="b", spec=_spec(), owner=None, max_queued=10).id
        # Not b's, committed, while the older transaction is open.
        assert _once_read(lambda: logged(Cursor()), 1) == [(first, "queued")]
        with session_factory() as session:
            cursor = events_after(session, [first, second], Cursor())[-1].cursor
        older.commit()
    assert _once_read(lambda: logged(cursor), 2) == [(first, "running"), (second, "queued")]


def _once_read(read: Callable[[], list], count: int) -> list:
    """`read()` once it holds `count` events. An event is read once every transaction older
    than it has ended on the whole PostgreSQL server, and the tests beside this one hold some
    in their own databases for a moment."""

    def enough() -> list | None:
        found = read()
        return found if len(found) >= count else None

    return _wait_for(enough)


def _spec():
    return ExperimentCreate.model_validate(TINY_SPEC).to_spec()


@SQLITE_ONLY
def test_streams_past_the_limit_get_a_503_with_retry_after(settings):
    with TestClient(create_app(settings.model_copy(update={"max_event_streams": 1}))) as client:
        created = submit(client)
        path = f"/experiments/{created['id']}/events"
        held = threading.Thread(target=stream, args=(client, path))
        held.start()
        _wait_for(lambda: _open_streams(client) == 1)
        refused = client.get(path)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert "MAX_EVENT_STREAMS" in refused.json()["detail"]
        client.post(f"/experiments/{created['id']}/cancel")
        held.join(10)
        # Its slot is free again once it has ended.
        assert [e.event for e in stream(client, path)][-1] == "done"
        assert _open_streams(client) == 0


def _open_streams(client, **headers: str) -> float:
    families = text_string_to_metric_families(client.get("/metrics", headers=headers).text)
    gauge = next(family for family in families if family.name == "convlab_event_streams_open")
    return gauge.samples[0].value


@SQLITE_ONLY
def test_one_key_cannot_take_every_stream(settings):
    keys = ["first-key-0123456789", "second-key-0123456789"]
    keyed = settings.model_copy(update={"api_keys": keys, "max_event_streams_per_key": 1})
    first, second = ({"Authorization": f"Bearer {key}"} for key in keys)
    with TestClient(create_app(keyed)) as client:
        waiting = client.post("/experiments", json=TINY_SPEC, headers=first).json()
        ended = client.post("/experiments", json=TINY_SPEC, headers=second).json()
        client.post(f"/experiments/{ended['id']}/cancel", headers=second)
        path = f"/experiments/{waiting['id']}/events"
        held = threading.Thread(target=stream, args=(client, path), kwargs=first)
        held.start()
        _wait_for(lambda: _open_streams(client, **first) == 1)
        refused = client.get(path, headers=first)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert "MAX_EVENT_STREAMS_PER_KEY" in refused.json()["detail"]
        # Another key still gets its stream (of an ended run: history, then `done`).
        other = stream(client, f"/experiments/{ended['id']}/events", **second)
        assert other[-1].event == "done"
        client.post(f"/experiments/{waiting['id']}/cancel", headers=first)
        held.join(10)
        assert not held.is_alive() and _open_streams(client, **first) == 0


@SQLITE_ONLY
def test_pings_keep_an_idle_stream_alive_and_the_stream_closes_after_its_limit(
    settings, monkeypatch
):
    monkeypatch.setattr(fastapi.routing, "_PING_INTERVAL", 0.2)
    limited = settings.model_copy(update={"event_stream_max_seconds": 1.0})
    with TestClient(create_app(limited)) as client:
        created = submit(client)
        path = f"/experiments/{created['id']}/events"
        started = time.monotonic()
        with client.stream("GET", path) as response:
            events, comments = parse_sse(response.iter_lines())
        took = time.monotonic() - started
        assert 1.0 <= took < 5 and [e.event for e in events] == ["status"]
        assert len(comments) >= 2 and set(comments) == {": ping"}
        # Closed without `done`: the client resumes where it was.
        client.post(f"/experiments/{created['id']}/cancel")
        resumed = stream(client, path, **{"Last-Event-ID": events[-1].id})
        assert [(e.event, e.data["status"]) for e in resumed] == [
            ("status", "cancelled"),
            ("done", "cancelled"),
        ]


@SQLITE_ONLY
def test_a_bad_cursor_is_422_and_an_unknown_experiment_or_study_404(client):
    created = submit(client)
    path = f"/experiments/{created['id']}/events"
    for bad in ("7", "null", "1-2-3", "9" * 19 + "-1"):
        refused = client.get(path, headers={"Last-Event-ID": bad})
        assert refused.status_code == 422 and "last-event-id" in refused.text.lower()
    assert client.get("/experiments/424242/events").status_code == 404
    assert client.get("/studies/424242/events").status_code == 404


def _follow_in_thread(url: str, into: list[Sse]) -> threading.Thread:
    def follow() -> None:
        started = time.monotonic()
        with httpx.stream("GET", url, timeout=30) as response:
            into.extend(i for i in sse_items(response.iter_lines(), started) if isinstance(i, Sse))
        into.append(Sse("closed", None, None, time.monotonic() - started))

    thread = threading.Thread(target=follow)
    thread.start()
    return thread


def test_two_api_processes_share_events_and_shutdown_ends_streams(database_url, backend, tmp_path):
    # On PostgreSQL only a notification can wake the stream in time: polling is left slow.
    poll = "30" if backend == "postgresql" else "0.2"
    with open(tmp_path / "api.log", "w+") as log:
        one, one_base = start_api(database_url, log, EVENT_POLL_SECONDS=poll)
        two, two_base = start_api(database_url, log, EVENT_POLL_SECONDS=poll)
        try:
            created = httpx.post(f"{two_base}/experiments", json=TINY_SPEC).json()
            events: list[Sse] = []
            follower = _follow_in_thread(f"{one_base}/experiments/{created['id']}/events", events)
            _wait_for(lambda: len(events) >= 1)
            cancelled_at = time.monotonic()
            httpx.post(f"{two_base}/experiments/{created['id']}/cancel")
            follower.join(10)
            assert [e.event for e in events] == ["status", "status", "done", "closed"]
            assert time.monotonic() - cancelled_at < 3

            # A stream, or a long poll, open when the server is told to stop does not hold it
            # up: the stream ends, the poll answers.
            waiting = httpx.post(f"{two_base}/experiments", json=TINY_SPEC).json()
            events.clear()
            follower = _follow_in_thread(f"{one_base}/experiments/{waiting['id']}/events", events)
            polled: list[httpx.Response] = []
            poll_url = f"{one_base}/experiments/{waiting['id']}?wait=60"
            poller = threading.Thread(target=lambda: polled.append(httpx.get(poll_url, timeout=90)))
            poller.start()
            _wait_for(lambda: len(events) >= 1)
            time.sleep(0.3)  # The poll has arrived and is waiting.
            stopped_at = time.monotonic()
            one.send_signal(signal.SIGTERM)
            one.wait(10)
            assert time.monotonic() - stopped_at < 1.5
            follower.join(5)
            poller.join(5)
            assert events[-1].event == "closed"
            assert polled[0].status_code == 200 and polled[0].json()["status"] == "queued"
        finally:
            for process in (one, two):
                process.terminate()
                process.wait(30)
        log.seek(0)
        assert "Traceback" not in log.read()


def _wait_for(condition: Callable[[], Any]) -> Any:
    return wait_for(condition, timeout=10, interval=0.02)


def test_every_status_change_and_epoch_is_logged_by_the_database(session_factory):
    """The triggers, not the code paths, write events: a bulk update logs one per row."""
    with transaction(session_factory) as session:
        ids = [
            queue.enqueue(session, name=None, spec=_spec(), owner=None, max_queued=10).id
            for _ in range(3)
        ]
    with transaction(session_factory) as session:
        session.execute(
            update(Experiment)
            .where(Experiment.id.in_(ids[:2]))
            .values(status=ExperimentStatus.CANCELLED)
        )
        session.execute(update(Experiment).where(Experiment.id == ids[2]).values(name="renamed"))
    with session_factory() as session:
        assert session.scalar(text("SELECT count(*) FROM events")) == 5

    def logged() -> list[tuple[int, str]]:
        with session_factory() as session:
            found = events_after(session, ids, Cursor())
        return [(event.experiment_id, event.data["status"]) for event in found]

    expected = [(i, "queued") for i in ids] + [(i, "cancelled") for i in ids[:2]]
    assert _once_read(logged, 5) == expected

"""The dashboard's pages as the server renders them (tests/test_dashboard.py drives them in a
browser): tables sorted and filtered on the server, escaping, keys, the layer preview."""

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.api import create_app
from service.models import Experiment, ExperimentStatus
from service.ui.pages import PAGE_SIZE
from tests.conftest import SQLITE_ONLY, submit

KEY = "u" * 32


def ids_in(page: str) -> list[int]:
    return [int(found) for found in re.findall(r'<tr data-experiment-id="(\d+)"', page)]


def finish(session_factory, accuracies: dict[int, float]) -> None:
    with session_factory() as session:
        for experiment_id, accuracy in accuracies.items():
            session.execute(
                update(Experiment)
                .where(Experiment.id == experiment_id)
                .values(status=ExperimentStatus.SUCCEEDED, test_accuracy=accuracy)
            )
        session.commit()


def test_the_table_sorts_by_any_column_filters_and_pages(client, session_factory):
    created = [submit(client, name=f"run {n}")["id"] for n in range(4)]
    finish(session_factory, {created[0]: 0.5, created[1]: 0.9, created[2]: 0.7})
    page = client.get("/ui/experiments", params={"sort": "accuracy", "order": "desc"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # Missing values (the queued run) come last, whichever the order.
    assert ids_in(page.text) == [created[1], created[2], created[0], created[3]]
    ascending = client.get("/ui/experiments", params={"sort": "accuracy", "order": "asc"}).text
    assert ids_in(ascending) == [created[0], created[2], created[1], created[3]]
    by_name = client.get("/ui/experiments", params={"sort": "name", "order": "asc"}).text
    assert ids_in(by_name) == created
    queued = client.get("/ui/experiments", params={"status": "queued"}).text
    assert ids_in(queued) == [created[3]]
    # The filter form as a browser sends it with a field left empty.
    blanks = client.get("/ui/experiments", params={"status": "", "study_id": ""})
    assert blanks.status_code == 200 and len(ids_in(blanks.text)) == 4
    none = client.get("/ui/experiments", params={"status": "failed", "study_id": ""}).text
    assert ids_in(none) == [] and "No experiment matches this filter" in none
    assert client.get("/ui/experiments", params={"sort": "colour"}).status_code == 422


@SQLITE_ONLY
def test_pages_hold_page_size_rows(client):
    for _ in range(PAGE_SIZE + 1):
        submit(client)
    first = client.get("/ui/experiments").text
    second = client.get("/ui/experiments", params={"page": 2}).text
    assert len(ids_in(first)) == PAGE_SIZE and len(ids_in(second)) == 1
    assert 'aria-current="page">2<' in second


@SQLITE_ONLY
def test_what_users_wrote_is_escaped(client):
    experiment = submit(client, name='<script>alert("x")</script>')
    for path in ("/ui/experiments", f"/ui/experiments/{experiment['id']}"):
        page = client.get(path).text
        assert "<script>alert" not in page and "&lt;script&gt;alert" in page


@SQLITE_ONLY
def test_the_experiment_page_and_its_live_part(client):
    experiment = submit(client, epochs=3)
    response = client.get(f"/ui/experiments/{experiment['id']}")
    page = response.text
    assert page.startswith("<!doctype html>") and "conv_1" in page
    # Queued: it can be cancelled; it has no model to download or to classify with yet.
    assert 'id="cancel"' in page and 'id="dropzone"' not in page and 'id="download"' not in page
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    live = client.get(f"/ui/experiments/{experiment['id']}", params={"part": "live"}).text
    assert 'id="curves"' in live and 'id="cancel"' in live and "<h1>" not in live
    fragment = client.get(f"/ui/experiments/{experiment['id']}", headers={"X-Fragment": "1"})
    assert "<html" not in fragment.text and 'id="live"' in fragment.text
    assert client.get("/ui/experiments/999999").status_code == 404
    assert client.get("/ui/experiments/0").status_code == 404
    assert client.get("/ui/studies/999999").status_code == 404


@SQLITE_ONLY
def test_with_keys_a_page_without_one_is_the_key_prompt(settings):
    keyed = settings.model_copy(update={"api_keys": [KEY]})
    with TestClient(create_app(keyed)) as client:
        submit_with_key = client.post(
            "/experiments", json={"name": "secret run"}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert submit_with_key.status_code == 202
        for path in ("/ui/experiments", "/ui/workers", "/ui/experiments/1"):
            page = client.get(path)
            assert page.status_code == 200 and 'id="key-prompt"' in page.text, path
            # Without a name, the key cannot end up in a URL if the form is sent script-less.
            assert '<input id="api-key" type="password"' in page.text
            assert "secret run" not in page.text
            refused = client.get(path, headers={"X-Fragment": "1"})
            assert refused.status_code == 401
        allowed = client.get(
            "/ui/experiments", headers={"X-Fragment": "1", "Authorization": f"Bearer {KEY}"}
        )
        assert allowed.status_code == 200 and "secret run" in allowed.text
        assert "key-prompt" not in allowed.text


@SQLITE_ONLY
def test_the_layer_preview_shows_the_summary_or_the_422_messages(client):
    summary = client.post("/ui/preview", json={"conv_layers": 1, "filters": 4})
    assert summary.status_code == 200 and "conv_1" in summary.text and "parameters" in summary.text
    refused = client.post("/ui/preview", json={"conv_layers": 1, "filters": 0})
    assert refused.status_code == 422 and "greater than or equal to 1" in refused.text
    unbuildable = client.post("/ui/preview", json={"conv_layers": 3, "kernel_size": 9}).text
    assert "conv_3 has a 9x9 kernel" in unbuildable and "Value error" not in unbuildable
    assert client.get("/experiments").json()["total"] == 0  # A preview stores nothing.


@SQLITE_ONLY
@pytest.mark.parametrize("path", ["/ui/experiments", "/ui/workers", "/ui/static/app.js"])
def test_nothing_is_fetched_from_another_host(client, path):
    """Every src and href is this server's (or a data: URL); the browser test checks the
    requests a real Chromium makes."""
    page = client.get(path)
    assert page.status_code == 200
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
    assert "http://" not in page.text and "https://" not in page.text

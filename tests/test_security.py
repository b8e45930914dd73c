"""Safe to expose: keys, cross-site requests, hosts, CORS, offline docs and refusal to start."""

import os
import re
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.api import create_app
from service.settings import Settings, UnsafeExposureError
from tests.conftest import ROOT, SQLITE_ONLY, TINY_SPEC

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"


@pytest.fixture
def keyed_settings(settings):
    return settings.model_copy(update={"api_keys": [KEY, OTHER_KEY]})


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# Probes, which carry no key: the service's own and the Open Inference Protocol's.
KEYLESS = {"/health", "/v2", "/v2/health/live", "/v2/health/ready"}


@SQLITE_ONLY
def test_with_keys_every_route_but_health_needs_a_valid_key(keyed_settings):
    with TestClient(create_app(keyed_settings)) as client:
        # Every documented route, so a new one cannot be left open by mistake.
        routes = [
            (method.upper(), re.sub(r"\{[^}]+\}", "1", path))
            for path, operations in client.app.openapi()["paths"].items()
            for method in operations
            if path not in KEYLESS
        ]
        assert ("GET", "/metrics") in routes and ("POST", "/studies") in routes
        for method, path in routes:
            missing = client.request(method, path, json=TINY_SPEC)
            assert missing.status_code == 401, (method, path)
            assert missing.headers["www-authenticate"].startswith("Bearer")
            wrong = client.request(method, path, json=TINY_SPEC, headers=bearer("x" * 30))
            message = wrong.json().get("detail") or wrong.json()["error"]  # /v1 and /v2: error
            assert wrong.status_code == 401 and "not valid" in message
            assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        for path in KEYLESS:
            assert client.get(path).status_code == 200, path
        assert client.get("/experiments", headers=bearer(KEY)).status_code == 200
        created = client.post("/experiments", json=TINY_SPEC, headers=bearer(OTHER_KEY))
        assert created.status_code == 202
        assert client.get("/experiments", headers=bearer(KEY)).json()["total"] == 1


@SQLITE_ONLY
def test_auth_reads_false_opens_reads_and_keeps_writes_closed(keyed_settings):
    open_reads = keyed_settings.model_copy(update={"auth_reads": False})
    with TestClient(create_app(open_reads)) as client:
        assert client.get("/experiments").status_code == 200
        assert client.get("/workers").status_code == 200
        blank = {"instances": [[[0] * 28] * 28]}
        assert client.post("/predict", json=blank).status_code == 409  # Open; no model yet.
        assert client.post("/experiments", json=TINY_SPEC).status_code == 401
        assert client.post("/experiments/1/cancel").status_code == 401
        # A wrong key is refused even where none is needed: it is a mistake worth telling.
        assert client.get("/experiments", headers=bearer("y" * 30)).status_code == 401


@SQLITE_ONLY
def test_keys_come_from_a_file_too(settings, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# convlab keys\n\n{KEY}\n")
    with TestClient(create_app(settings.model_copy(update={"api_keys_file": keys}))) as client:
        assert client.get("/experiments").status_code == 401
        assert client.get("/experiments", headers=bearer(KEY)).status_code == 200


def test_short_keys_and_unreadable_key_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="shorter than 16"):
        Settings(api_keys="short", _env_file=None)
    with pytest.raises(ValueError, match="API_KEYS_FILE cannot be read"):
        Settings(api_keys_file=tmp_path / "missing", _env_file=None)


@SQLITE_ONLY
def test_the_queue_limit_counts_each_keys_experiments(keyed_settings):
    limited = keyed_settings.model_copy(update={"max_queued": 2})
    with TestClient(create_app(limited)) as client:
        for _ in range(2):
            accepted = client.post("/experiments", json=TINY_SPEC, headers=bearer(KEY))
            assert accepted.status_code == 202
        refused = client.post("/experiments", json=TINY_SPEC, headers=bearer(KEY))
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0
        assert "2 of your experiments are queued or running" in refused.json()["detail"]
        # Another key has a queue of its own; cancelling frees a place.
        assert client.post("/experiments", json=TINY_SPEC, headers=bearer(OTHER_KEY)).is_success
        client.post("/experiments/1/cancel", headers=bearer(KEY))
        assert client.post("/experiments", json=TINY_SPEC, headers=bearer(KEY)).status_code == 202
        assert client.get("/experiments", headers=bearer(KEY)).json()["total"] == 4


def test_a_form_posted_from_another_site_is_refused_and_changes_nothing(client):
    created = client.post("/experiments", json=TINY_SPEC).json()
    cancel = f"/experiments/{created['id']}/cancel"
    attacks = [
        {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:3000"},
    ]
    for headers in attacks:
        response = client.post(cancel, content=b"a=1", headers=headers)
        assert response.status_code == 403, headers
    assert client.get(f"/experiments/{created['id']}").json()["status"] == "queued"
    # A page of this service, and curl (which sends neither header), still may.
    same_origin = client.post(cancel, headers={"Origin": "http://testserver"})
    assert same_origin.status_code == 200
    assert client.post("/experiments", json=TINY_SPEC).status_code == 202


@SQLITE_ONLY
def test_cors_is_off_unless_origins_are_set(settings):
    origin = "http://dashboard.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(settings)) as client:
        response = client.options("/experiments", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    allowed = settings.model_copy(update={"cors_origins": [origin]})
    with TestClient(create_app(allowed)) as client:
        response = client.options("/experiments", headers=preflight)
        assert response.headers["access-control-allow-origin"] == origin
        # An allowed origin may also write.
        created = client.post("/experiments", json=TINY_SPEC, headers={"Origin": origin})
        assert created.status_code == 202


@SQLITE_ONLY
def test_only_allowed_host_names_are_answered(settings):
    with TestClient(create_app(settings.model_copy(update={"allowed_hosts": ["localhost"]}))) as c:
        assert c.get("/experiments", headers={"Host": "evil.example"}).status_code == 400
        assert c.get("/health", headers={"Host": "localhost:8000"}).status_code == 200
        # A container's health check asks by address, whatever ALLOWED_HOSTS names.
        assert c.get("/health", headers={"Host": "172.17.0.2:8000"}).status_code == 200


def test_api_docs_load_nothing_from_the_internet(client):
    for path in ("/docs", "/redoc"):
        page = client.get(path).text
        assert "cdn" not in page.lower() and "https://" not in page
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/static-offline-docs/redoc.standalone.js").status_code == 200


def test_exposure_check_refuses_a_public_host_without_keys(settings):
    public = settings.model_copy(update={"host": "0.0.0.0"})
    with pytest.raises(UnsafeExposureError, match="API_KEYS"):
        create_app(public)
    create_app(public.model_copy(update={"api_keys": [KEY]}))
    create_app(public.model_copy(update={"allow_unauthenticated": True}))
    create_app(settings.model_copy(update={"host": "::1"}))


@SQLITE_ONLY
def test_the_api_command_refuses_to_start_on_a_public_host_without_keys(database_url):
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "HOST": "0.0.0.0",
        "API_KEYS": "",
        "API_KEYS_FILE": "",
    }
    environment.pop("ALLOW_UNAUTHENTICATED", None)
    result = subprocess.run(
        [sys.executable, "-m", "service", "api"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to start" in result.stderr and "API_KEYS" in result.stderr


def test_names_an_older_version_read_are_refused_not_ignored(monkeypatch):
    monkeypatch.setenv("BATCH_WAIT_MS", "0")
    monkeypatch.setenv("MODEL_CHECK_SECONDS", "5")
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)
    assert "BATCH_WAIT_MS is now BATCH_WAIT_SECONDS, in seconds" in str(refused.value)
    assert "MODEL_CHECK_SECONDS is now MODEL_LOOKUP_TTL_SECONDS" in str(refused.value)


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("allowed_hosts", "", "ALLOWED_HOSTS is empty"),
        ("allowed_hosts", "localhost:8000", "without a port"),
        ("allowed_hosts", "foo*", "a wildcard is"),
        ("allowed_hosts", "*", "DNS rebinding"),
        ("cors_origins", "*", "not an origin"),
        ("cors_origins", "https://app.example.org/path", "not an origin"),
        ("api_keys", "ключ-ключ-ключ-ключ-ключ", "characters a header cannot carry"),
        ("database_url", "sqlite://", "in-memory"),
    ],
)
def test_settings_that_cannot_work_are_refused(setting, value, message):
    with pytest.raises(ValidationError, match=message) as refused:
        Settings(**{setting: value}, _env_file=None)
    if setting == "api_keys":
        assert value not in str(refused.value)  # Never print a key.


def test_wildcard_hosts_are_allowed_with_keys_and_origins_lose_their_slash():
    from service.settings import Settings

    settings = Settings(
        allowed_hosts="*", api_keys=KEY, cors_origins="https://a.example.org/", _env_file=None
    )
    assert settings.cors_origins == ["https://a.example.org"]


def test_every_operation_but_health_asks_for_the_bearer_key(client):
    document = client.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path in KEYLESS:
                assert "security" not in operation
            else:
                assert operation.get("security") == [{"HTTPBearer": []}], (method, path)


def test_a_same_site_page_without_an_origin_may_not_write(client):
    created = client.post("/experiments", json=TINY_SPEC).json()
    response = client.post(
        f"/experiments/{created['id']}/cancel", headers={"Sec-Fetch-Site": "same-site"}
    )
    assert response.status_code == 403
    assert client.get(f"/experiments/{created['id']}").json()["status"] == "queued"

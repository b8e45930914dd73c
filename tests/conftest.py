"""Shared fixtures: a migrated database per test, the API over httpx, an in-process worker."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.api import create_app
from service.datasets import FashionMNIST, load_fashion_mnist
from service.db import create_db_engine, create_session_factory
from service.settings import Settings
from service.worker import Worker

ROOT = Path(__file__).resolve().parent.parent

# Small and quick, but a real network on real images.
TINY_SPEC = {
    "conv_layers": 1,
    "filters": 8,
    "dense_units": [32],
    "epochs": 2,
    "train_samples": 600,
    "batch_size": 64,
    "seed": 1,
}


def upgrade(database_url: str) -> None:
    config = Config(ROOT / "alembic.ini")
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'test.db'}"
    upgrade(url)
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        worker_poll_seconds=0.05,
        worker_heartbeat_seconds=0.2,
        _env_file=None,
    )


@pytest.fixture
def session_factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(settings.database_url)
    yield create_session_factory(engine)
    engine.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def dataset() -> FashionMNIST:
    return load_fashion_mnist()


@pytest.fixture
def drain(settings: Settings, session_factory: sessionmaker[Session]):
    """Run an in-process CPU worker until the queue is empty."""

    def _drain(worker_settings: Settings | None = None) -> None:
        Worker(worker_settings or settings, session_factory, device="cpu").run(drain=True)

    return _drain


def submit(client: TestClient, **overrides) -> dict:
    response = client.post("/experiments", json={**TINY_SPEC, **overrides})
    assert response.status_code == 202, response.text
    return response.json()

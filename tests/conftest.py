"""Shared fixtures: a migrated database per test, the API over httpx, an in-process worker."""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx2 as httpx
import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from service.api import create_app
from service.datasets import FashionMNIST, load_fashion_mnist
from service.db import create_db_engine, create_session_factory
from service.settings import Settings
from service.worker import TrainerProcess, TrainingWorker

ROOT = Path(__file__).resolve().parent.parent
# The server .ci/run starts; each test that uses it gets a database of its own.
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])
POSTGRESQL_ONLY = pytest.mark.parametrize("backend", ["postgresql"])

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_api(base: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until the API started as `process` answers /health; fails if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{base}/health", timeout=1)
            return
        except httpx.TransportError:
            assert process.poll() is None, "the API process exited"
            assert time.monotonic() < deadline, "the API never answered"
            time.sleep(0.2)


def wait_for(predicate, timeout: float = 90, interval: float = 0.1):
    """`predicate()`'s first truthy value, asked every `interval` s; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def start_api(database_url: str, log: IO[str], **settings: str) -> tuple[subprocess.Popen, str]:
    """`python -m service api` on its own port, answering; the caller stops it."""
    port = free_port()
    environment = {**os.environ, "DATABASE_URL": database_url, "PORT": str(port), **settings}
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
    except BaseException:
        api.kill()
        api.wait()
        raise
    return api, base


@contextmanager
def api_process(database_url: str, log_path: Path, **settings: str) -> Iterator[str]:
    """`python -m service api` on its own port; fails the test if it logged a traceback."""
    with open(log_path, "w+") as log:
        api, base = start_api(database_url, log, **settings)
        try:
            yield base
        finally:
            api.terminate()
            api.wait(30)
        log.seek(0)
        assert "Traceback" not in log.read()


def upgrade(database_url: str) -> None:
    config = Config(ROOT / "alembic.ini")
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


@contextmanager
def fresh_postgres_database(template: str | None = None) -> Iterator[str]:
    """A new database on the real PostgreSQL server (a copy of `template`), dropped afterwards."""
    admin_url = make_url(POSTGRES_URL)
    # No pool: a server restart in a test must not leave this engine a dead connection.
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"convlab_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


# Migrating takes about a second a database; each test copies one migrated template instead.
@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    with fresh_postgres_database() as url:
        upgrade(url)
        yield make_url(url).database


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    """Every test that touches the database runs on both; `SQLITE_ONLY` narrows one down."""
    return request.param


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request) -> Iterator[str]:
    """A migrated database of the test's own."""
    if backend == "postgresql":
        with fresh_postgres_database(request.getfixturevalue("postgres_template")) as url:
            yield url
        return
    path = tmp_path / "test.db"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    yield f"sqlite:///{path}"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        worker_poll_seconds=0.05,
        worker_heartbeat_seconds=0.2,
        lease_seconds=3,
        # TestClient's requests say `Host: testserver`.
        allowed_hosts=["testserver", "127.0.0.1", "localhost"],
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


class _KeptTrainer:
    """A training child that outlives the worker that used it, as a production child outlives
    its experiments: starting one (importing the backend, loading the data set) costs seconds,
    and the in-process tests would pay it at every drain. Killing it is real."""

    def __init__(self, trainer: TrainerProcess) -> None:
        self._trainer = trainer

    def __getattr__(self, name: str):
        return getattr(self._trainer, name)

    def close(self) -> None:
        """Kept for the next worker; the session closes it."""


@pytest.fixture(scope="session")
def kept_trainers() -> Iterator[Callable[[Settings], _KeptTrainer]]:
    """A training child per set of settings it starts with, alive across tests."""
    trainers: dict[tuple, TrainerProcess] = {}

    def trainer_for(settings: Settings) -> _KeptTrainer:
        key = (settings.fashion_mnist_dir, settings.worker_nice, settings.worker_threads)
        if key not in trainers or not trainers[key].alive():
            trainers[key] = TrainerProcess(
                settings.fashion_mnist_dir,
                nice=settings.worker_nice,
                threads=settings.worker_threads,
            )
        return _KeptTrainer(trainers[key])

    yield trainer_for
    for trainer in trainers.values():
        trainer.close()


@pytest.fixture
def drain(settings: Settings, session_factory: sessionmaker[Session], kept_trainers):
    """Run an in-process CPU worker until the queue is empty."""

    def _drain(worker_settings: Settings | None = None) -> None:
        chosen = worker_settings or settings
        TrainingWorker(
            chosen, session_factory, device="cpu", trainer_factory=lambda: kept_trainers(chosen)
        ).run(drain=True)

    return _drain


def train_queued(settings: Settings, kept_trainers) -> None:
    """Train everything queued in `settings.database_url`, in this process (module fixtures)."""
    engine = create_db_engine(settings.database_url)
    TrainingWorker(
        settings,
        create_session_factory(engine),
        device="cpu",
        trainer_factory=lambda: kept_trainers(settings),
    ).run(drain=True)
    engine.dispose()


def submit(client: TestClient, **overrides) -> dict:
    response = client.post("/experiments", json={**TINY_SPEC, **overrides})
    assert response.status_code == 202, response.text
    return response.json()

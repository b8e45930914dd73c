"""The model server: the model a request names, loaded once, behind one batcher of its own."""

import asyncio
import gc
import hashlib
import weakref

import numpy as np
import pytest
from sqlalchemy import update

from service.api.database import Database
from service.db import create_db_engine, create_session_factory
from service.heap import refreeze_heap
from service.ml.model import build_model, save_model_bytes
from service.models import Experiment, ExperimentStatus, TrainedModel, utcnow
from service.serving.model_server import ModelServer
from service.serving.resolver import ExperimentNotFoundError, ModelNotReadyError
from service.settings import Settings
from service.spec import ExperimentCreate
from tests.conftest import upgrade

SPEC = ExperimentCreate(conv_layers=1, filters=4, dense_units=[8], seed=1).to_spec()


def keras_file(seed: int) -> bytes:
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(SPEC)
    # A step creates the optimizer's variables, which loading the saved file expects.
    model.fit(np.zeros((8, 28, 28, 1), np.float32), np.zeros(8), verbose=0)
    return save_model_bytes(model)


@pytest.fixture
def database_url(tmp_path) -> str:
    """Experiment 1 and 2 succeeded with a model each, 3 still queued."""
    url = f"sqlite:///{tmp_path / 'test.db'}"
    upgrade(url)
    data = keras_file(1)
    engine = create_db_engine(url)
    with create_session_factory(engine)() as session:
        succeeded, queued = ExperimentStatus.SUCCEEDED, ExperimentStatus.QUEUED
        for status in (succeeded, succeeded, queued):
            experiment = Experiment(
                status=status,
                spec=SPEC.model_dump(mode="json"),
                summary=SPEC.summary().as_dict(),
                requested_device="cpu",
                finished_at=utcnow() if status == succeeded else None,
            )
            session.add(experiment)
            session.flush()
            if status == succeeded:
                session.add(TrainedModel.of(experiment.id, data))
        session.commit()
    engine.dispose()
    return url


def serve(database_url: str, scenario, **settings) -> object:
    """Run `scenario(server)` against a model server on this database, as the API would."""
    engine = create_db_engine(database_url)

    async def run() -> object:
        database = Database(
            create_session_factory(engine),
            create_session_factory(engine, read_only=True),
            wait_seconds=5,
            write_slots=1,
        )
        server = ModelServer(
            database,
            Settings(database_url=database_url, _env_file=None, **settings),
            after_load=refreeze_heap,
        )
        try:
            return await scenario(server)
        finally:
            server.close()
            database.close()

    try:
        return asyncio.run(run())
    finally:
        engine.dispose()


def test_requests_for_one_model_share_its_batcher_and_a_changed_model_gets_a_new_one(
    database_url,
):
    def replace_model() -> None:
        data = keras_file(2)
        engine = create_db_engine(database_url)
        with create_session_factory(engine)() as session:
            session.execute(
                update(TrainedModel)
                .where(TrainedModel.experiment_id == 1)
                .values(keras_file=data, sha256=hashlib.sha256(data).hexdigest())
            )
            session.commit()
        engine.dispose()

    async def scenario(server: ModelServer):
        first = await server.model_for(1)
        again = await server.model_for(1)
        replace_model()
        changed = await server.model_for(1)
        return first, again, changed

    first, again, changed = serve(database_url, scenario, model_lookup_ttl_seconds=0)
    assert first.experiment_id == again.experiment_id == changed.experiment_id == 1
    assert again.batcher is first.batcher
    assert changed.batcher is not first.batcher
    assert changed.batcher.model is not first.batcher.model


def test_an_evicted_model_is_freed_with_its_batcher(database_url):
    async def scenario(server: ModelServer):
        first = await server.model_for(1)
        model = weakref.ref(first.batcher.model)
        del first
        latest = await server.model_for(None)  # Experiment 2 finished last.
        # Freed by the heap freeze after the load: a model left frozen is never collected.
        return latest, model() is None

    latest, freed = serve(database_url, scenario, model_cache_size=1)
    assert latest.experiment_id == 2
    assert gc.get_freeze_count() > 0
    assert freed


def test_a_model_evicted_before_its_request_resumes_is_not_kept_by_a_batcher(database_url):
    """Two loads race with room for one: the request whose model the other load evicted is
    still answered, but nothing keeps its model resident beyond the cache's bound."""

    data = keras_file(1)

    async def scenario(server: ModelServer):
        loaded = server.cache.get(1, "first", lambda: data)
        server.cache.get(2, "second", lambda: data)  # Evicts the first.
        batcher = server._batcher(loaded)
        return batcher, loaded, dict(server._batchers)

    batcher, loaded, batchers = serve(database_url, scenario, model_cache_size=1)
    assert batcher.model is loaded
    assert 1 not in batchers


@pytest.mark.parametrize(
    ("experiment_id", "error", "message"),
    [
        (3, ModelNotReadyError, "experiment 3 is queued, not succeeded"),
        (4, ExperimentNotFoundError, "experiment 4 does not exist"),
    ],
)
def test_an_experiment_without_a_model_says_why(database_url, experiment_id, error, message):
    async def scenario(server: ModelServer):
        with pytest.raises(error, match=message):
            await server.model_for(experiment_id)

    serve(database_url, scenario)

"""Concurrent predictions for one model are answered by one padded, compiled call."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.ml.model import build_model
from service.serving.batching import MicroBatcher, batch_sizes, padded_size
from service.serving.model_cache import LoadedModel
from service.spec import ExperimentCreate

# Timings or memory measured here: run alone (make test runs these after the rest).
pytestmark = pytest.mark.serial


class RecordingModel(LoadedModel):
    """A real Keras model that also notes the batch size of every call."""

    calls: list[int]

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        self.calls.append(len(pixels))
        return super().predict(pixels)


@pytest.fixture(scope="module")
def model() -> RecordingModel:
    spec = ExperimentCreate(conv_layers=1, filters=4, dense_units=[8], seed=1).to_spec()
    loaded = RecordingModel(1, "sha", build_model(spec), size_bytes=0)
    loaded.calls = []
    return loaded


@pytest.mark.parametrize(
    ("count", "expected"), [(1, 1), (2, 2), (3, 4), (9, 16), (64, 64), (65, 65)]
)
def test_batches_are_padded_to_powers_of_two_up_to_the_maximum(count, expected):
    assert padded_size(count, 64) == expected


@pytest.mark.parametrize(
    ("max_batch", "expected"),
    [(1, (1,)), (64, (1, 2, 4, 8, 16, 32, 64)), (48, (1, 2, 4, 8, 16, 32, 48))],
)
def test_the_sizes_warmed_up_are_all_the_batcher_sends(max_batch, expected):
    assert batch_sizes(max_batch) == expected


def run_concurrently(batcher: MicroBatcher, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Requests that all arrive, then each hand in their images, as the API's do."""

    async def request(pixels: np.ndarray) -> np.ndarray:
        async with batcher.arriving() as ticket:
            await asyncio.sleep(0)  # Reading the upload: the others arrive meanwhile.
            return await batcher.predict(pixels, ticket)

    async def all_at_once():
        return await asyncio.gather(*(request(x) for x in inputs))

    return asyncio.run(all_at_once())


def test_concurrent_requests_share_one_call_and_get_their_own_answers(model, dataset):
    images = dataset.test_images[:20].astype(np.float32) / 255
    inputs = [images[i : i + 1] for i in range(20)]
    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher(model, max_wait=0.05, max_batch=64, executor=executor)
        model.calls.clear()
        answers = run_concurrently(batcher, inputs)
    assert model.calls == [32]  # 20 requests, one call, padded to 32.
    alone = model.model.predict_on_batch(images[..., np.newaxis])
    for index, answer in enumerate(answers):
        assert answer.probabilities.shape == (1, 10) and answer.batch_images == 20
        np.testing.assert_allclose(answer.probabilities[0], alone[index], atol=1e-5)


class GatedModel(RecordingModel):
    """Holds every call until the gate opens, so that requests pile up meanwhile."""

    started: threading.Event
    gate: threading.Event

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        self.started.set()
        self.gate.wait(10)
        return super().predict(pixels)


def test_requests_that_arrive_while_the_model_is_busy_share_its_next_call(model, dataset):
    """As in the API: each request arrives and hands in its image in one step, one after another.

    Nobody is left "in flight" between them, so only the busy model can gather them.
    """
    gated = GatedModel(1, "sha", model.model, size_bytes=0)
    gated.calls, gated.started, gated.gate = [], threading.Event(), threading.Event()
    images = dataset.test_images[:10].astype(np.float32) / 255

    async def request(pixels: np.ndarray):
        async with batcher.arriving() as ticket:
            return await batcher.predict(pixels, ticket)

    async def scenario():
        first = asyncio.create_task(request(images[:1]))
        await asyncio.get_running_loop().run_in_executor(None, gated.started.wait, 10)
        rest = [asyncio.create_task(request(images[i : i + 1])) for i in range(1, 10)]
        await asyncio.sleep(0.05)  # Long enough for all nine to hand in their images.
        gated.gate.set()
        return await asyncio.gather(first, *rest)

    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher(gated, max_wait=5.0, max_batch=64, executor=executor)
        answers = asyncio.run(scenario())
    assert gated.calls == [1, 16]  # The nine that waited went together, padded to 16.
    assert [answer.batch_images for answer in answers] == [1] + [9] * 9
    alone = model.model.predict_on_batch(images[..., np.newaxis])
    for index, answer in enumerate(answers):
        np.testing.assert_allclose(answer.probabilities[0], alone[index], atol=1e-5)


def test_a_full_batch_is_sent_without_waiting(model, dataset):
    images = dataset.test_images[:8].astype(np.float32) / 255
    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher(model, max_wait=10.0, max_batch=4, executor=executor)
        model.calls.clear()
        answers = run_concurrently(batcher, [images[i : i + 1] for i in range(8)])
    assert model.calls == [4, 4] and len(answers) == 8


def test_zero_wait_turns_batching_off(model, dataset):
    images = dataset.test_images[:5].astype(np.float32) / 255
    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher(model, max_wait=0, max_batch=64, executor=executor)
        model.calls.clear()
        run_concurrently(batcher, [images[i : i + 1] for i in range(5)])
    assert model.calls == [1, 1, 1, 1, 1]


def test_a_lone_request_does_not_wait(model, dataset):
    images = dataset.test_images[:1].astype(np.float32) / 255
    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher(model, max_wait=5.0, max_batch=64, executor=executor)
        started = time.monotonic()
        run_concurrently(batcher, [images])
    assert time.monotonic() - started < 1.0


def test_a_request_that_fails_before_predicting_does_not_hold_up_the_others(model, dataset):
    images = dataset.test_images[:3].astype(np.float32) / 255

    async def failing() -> None:
        async with batcher.arriving():
            await asyncio.sleep(0)
            raise ValueError("undecodable image")

    async def good(pixels: np.ndarray) -> np.ndarray:
        async with batcher.arriving() as ticket:
            await asyncio.sleep(0)
            return await batcher.predict(pixels, ticket)

    async def mixed():
        return await asyncio.gather(
            good(images[:1]), failing(), good(images[1:3]), return_exceptions=True
        )

    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher(model, max_wait=5.0, max_batch=64, executor=executor)
        model.calls.clear()
        started = time.monotonic()
        first, error, second = asyncio.run(mixed())
    assert time.monotonic() - started < 1.0
    assert isinstance(error, ValueError)
    assert first.probabilities.shape == (1, 10) and second.probabilities.shape == (2, 10)
    assert model.calls == [4]

"""The model cache: bounded by count and bytes, reloads changed models, never blocks others."""

import gc
import threading
import time
import weakref

import numpy as np

from service.heap import refreeze_heap
from service.ml.model import build_model, save_model_bytes
from service.serving.model_cache import ModelCache
from service.spec import ExperimentCreate

SPEC = ExperimentCreate(conv_layers=1, filters=4, dense_units=[8], seed=1).to_spec()


def keras_file(seed: int) -> bytes:
    """A model after one real training step, saved as the worker saves it."""
    import keras

    from service.datasets import load_fashion_mnist, to_model_input

    data = load_fashion_mnist()
    keras.utils.set_random_seed(seed)
    model = build_model(SPEC)
    model.fit(to_model_input(data.train_images[:32]), data.train_labels[:32], verbose=0)
    return save_model_bytes(model)


def test_least_recently_used_model_is_evicted_past_the_count():
    data = keras_file(1)
    cache = ModelCache(capacity=2, max_bytes=10**9)
    for experiment_id in (1, 2):
        cache.get(experiment_id, "a", lambda: data)
    cache.get(1, "a", lambda: data)  # 1 is now the most recently used.
    cache.get(3, "a", lambda: data)
    assert cache.cached_ids() == [1, 3]


def test_memory_bound_evicts_but_always_keeps_the_newest():
    data = keras_file(1)
    cache = ModelCache(capacity=10, max_bytes=1)
    first = cache.get(1, "a", lambda: data)
    assert first.size_bytes == first.model.count_params() * 4
    cache.get(2, "a", lambda: data)
    assert cache.cached_ids() == [2]


def test_a_changed_model_is_reloaded(dataset):
    old, new = keras_file(1), keras_file(2)
    cache = ModelCache(capacity=2, max_bytes=10**9)
    pixels = dataset.test_images[:4].astype(np.float32) / 255
    before = cache.get(1, "old", lambda: old).predict(pixels)
    after = cache.get(1, "new", lambda: new).predict(pixels)
    assert not np.allclose(before, after)
    assert cache.get(1, "new", lambda: b"never fetched").sha256 == "new"


def test_loading_one_model_does_not_stall_requests_for_another():
    data = keras_file(1)
    cache = ModelCache(capacity=4, max_bytes=10**9)
    cache.get(1, "a", lambda: data)

    def slow_fetch() -> bytes:
        time.sleep(1.5)
        return data

    loader = threading.Thread(target=cache.get, args=(2, "a", slow_fetch))
    loader.start()
    time.sleep(0.1)
    started = time.monotonic()
    cache.get(1, "a", lambda: b"never fetched")
    assert time.monotonic() - started < 0.2
    loader.join()
    assert cache.cached_ids() == [1, 2]


def test_loaded_models_stay_out_of_collections_and_evicted_ones_are_freed():
    data = keras_file(1)
    cache = ModelCache(capacity=1, max_bytes=10**9, on_load=refreeze_heap)
    first = weakref.ref(cache.get(1, "a", lambda: data).model)
    # Frozen: the collector's full passes no longer walk the loaded model and its backend.
    assert first() is not None and gc.get_freeze_count() > 0
    cache.get(2, "a", lambda: data)
    # Keras models are full of reference cycles: only a collection frees an evicted one, and
    # a model left frozen would never be collected.
    assert first() is None

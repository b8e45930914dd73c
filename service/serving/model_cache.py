"""Trained models loaded and warmed up, least recently used evicted past a count or a size."""

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.architecture import FLOAT_BYTES, IMAGE_SIZE
from service.import_guard import keep_unused_libraries_out
from service.metrics import MODEL_CACHE_LOOKUPS


@dataclass
class LoadedModel:
    experiment_id: int
    sha256: str
    model: object
    size_bytes: int

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of 28×28 images, in one compiled call."""
        return np.asarray(self.model.predict_on_batch(pixels[..., np.newaxis]))


class ModelCache:
    """Loaded, warmed-up models, least recently used evicted past `capacity` or `max_bytes`."""

    def __init__(
        self,
        capacity: int,
        max_bytes: int,
        warm_up_sizes: Sequence[int] = (1,),
        on_load: Callable[[], None] | None = None,
    ) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        # Each batch size is compiled at load, so no request pays for a compilation (JAX compiles
        # every shape; TensorFlow generalizes after two).
        self.warm_up_sizes = warm_up_sizes
        # Called after each load, evictions done, on the loading thread: the API process
        # freezes its heap there (service/heap.py).
        self.on_load = on_load
        self._models: OrderedDict[int, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}

    def get(self, experiment_id: int, sha256: str, fetch: Callable[[], bytes]) -> LoadedModel:
        """The model with this checksum, loaded with `fetch()` on a miss or after a change."""
        with self._lock:
            cached = self._models.get(experiment_id)
            if cached is not None and cached.sha256 == sha256:
                self._models.move_to_end(experiment_id)
                MODEL_CACHE_LOOKUPS.labels("hit").inc()
                return cached
            loading = self._loading.setdefault(experiment_id, threading.Lock())
        # One loader per model; requests for other models are not held up meanwhile.
        with loading:
            with self._lock:
                cached = self._models.get(experiment_id)
                if cached is not None and cached.sha256 == sha256:
                    # Another request loaded it meanwhile: this one waited, but loaded nothing.
                    MODEL_CACHE_LOOKUPS.labels("hit").inc()
                    return cached
            MODEL_CACHE_LOOKUPS.labels("miss").inc()
            # Imported at the first load: an API process that serves no model never pays
            # the seconds a Keras backend takes to import.
            keep_unused_libraries_out()
            from service.ml.model import load_model_bytes

            model = load_model_bytes(fetch())
            for size in self.warm_up_sizes:
                model.predict_on_batch(np.zeros((size, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32))
            loaded = LoadedModel(
                experiment_id, sha256, model, size_bytes=model.count_params() * FLOAT_BYTES
            )
            with self._lock:
                self._models[experiment_id] = loaded
                self._models.move_to_end(experiment_id)
                while len(self._models) > 1 and (
                    len(self._models) > self.capacity or self.cached_bytes() > self.max_bytes
                ):
                    self._models.popitem(last=False)
            if self.on_load is not None:
                self.on_load()
            return loaded

    def holds(self, experiment_id: int, sha256: str) -> bool:
        """Whether `get` would answer at once, without loading."""
        cached = self._models.get(experiment_id)
        return cached is not None and cached.sha256 == sha256

    def holds_loaded(self, loaded: LoadedModel) -> bool:
        """Whether this very load is still the cached one (not evicted, not replaced)."""
        return self._models.get(loaded.experiment_id) is loaded

    def cached_bytes(self) -> int:
        return sum(model.size_bytes for model in self._models.values())

    def cached_ids(self) -> list[int]:
        with self._lock:
            return list(self._models)

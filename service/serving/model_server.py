"""The model server: which model answers a request, that model loaded, and its micro-batcher.

One per API process. Requests ask it for the model that serves them and send their images to
that model's batcher; the models run on one thread of its own, one batch at a time.
"""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from anyio import to_thread

from service.serving.batching import MicroBatcher, batch_sizes
from service.serving.model_cache import LoadedModel, ModelCache
from service.serving.resolver import ModelResolver, ReadOnlyDatabase, Target, stored_model
from service.settings import Settings


class ServedModel(NamedTuple):
    experiment_id: int
    batcher: MicroBatcher


class ModelServer:
    """Resolves a request's model, loads it into the cache, and batches its predictions."""

    def __init__(
        self,
        database: ReadOnlyDatabase,
        settings: Settings,
        *,
        after_load: Callable[[], None] | None = None,
    ) -> None:
        self.database = database
        self.batch_wait_seconds = settings.batch_wait_seconds
        self.batch_max_images = settings.batch_max_images
        self.after_load = after_load
        self.resolver = ModelResolver(database, settings.model_lookup_ttl_seconds)
        self.cache = ModelCache(
            settings.model_cache_size,
            settings.model_cache_bytes,
            warm_up_sizes=batch_sizes(settings.batch_max_images),
            on_load=self._loaded,
        )
        # The compute inside a model call uses the backend's own threads (INFERENCE_THREADS).
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._batchers: dict[int, tuple[LoadedModel, MicroBatcher]] = {}
        self._batchers_lock = threading.Lock()  # Loads drop batchers from their own threads.

    async def chosen(self, target: Target) -> tuple[int, str]:
        """The experiment that serves `target`, and its model's checksum; nothing is loaded.

        Raises ExperimentNotFoundError, StudyNotFoundError or ModelNotReadyError when none can.
        """
        return self.resolver.cached(target) or await self.resolver.resolve(target)

    async def model_for(self, target: Target) -> ServedModel:
        """The model that serves `target` (an experiment id, a study's best run, or None: the
        latest succeeded), loaded; raises as `chosen` does."""
        chosen_id, sha256 = await self.chosen(target)
        if self.cache.holds(chosen_id, sha256):
            loaded = self.cache.get(chosen_id, sha256, self._fetcher(chosen_id))
        else:
            loaded = await to_thread.run_sync(
                self.cache.get, chosen_id, sha256, self._fetcher(chosen_id)
            )
        return ServedModel(chosen_id, self._batcher(loaded))

    def _fetcher(self, experiment_id: int) -> Callable[[], bytes]:
        def fetch() -> bytes:
            with self.database.read_session_factory() as session:
                return stored_model(session, experiment_id)

        return fetch

    def _batcher(self, loaded: LoadedModel) -> MicroBatcher:
        """The loaded model's batcher, made on the first request it serves."""
        # `_loaded` swaps in a whole new dict, so this read needs no lock.
        served = self._batchers.get(loaded.experiment_id)
        if served is not None and served[0] is loaded:
            return served[1]
        with self._batchers_lock:
            batcher = MicroBatcher(
                loaded,
                max_wait=self.batch_wait_seconds,
                max_batch=self.batch_max_images,
                executor=self.executor,
            )
            # A load for another request may have evicted this model while this one waited
            # for it: its batcher serves this request alone, so the model goes with both
            # instead of staying resident beyond the cache's bounds.
            if self.cache.holds_loaded(loaded):
                self._batchers[loaded.experiment_id] = (loaded, batcher)
            return batcher

    def _loaded(self) -> None:
        """After a load: forget the batchers of models evicted or replaced, then `after_load`."""
        with self._batchers_lock:
            self._batchers = {
                experiment_id: (loaded, batcher)
                for experiment_id, (loaded, batcher) in self._batchers.items()
                if self.cache.holds_loaded(loaded)
            }
        # Their models are unreachable now, so the heap freeze collects them.
        if self.after_load is not None:
            self.after_load()

    def close(self) -> None:
        """Let the model call in progress finish, then stop the model thread."""
        self.executor.shutdown()

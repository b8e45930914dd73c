"""Request-level micro-batching: concurrent predictions for one model become one call.

Like TensorFlow Serving's batching: requests arriving within `max_wait` seconds of the first
(or until `max_batch` images) are stacked, padded to a fixed size so the compiled function is
never retraced for a new batch size, run once, and answered individually.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.inference import LoadedModel


def padded_size(count: int, max_batch: int) -> int:
    """The smallest power of two that holds `count`, capped at `max_batch`."""
    size = 1
    while size < count:
        size *= 2
    return min(size, max(max_batch, count))


@dataclass
class _Pending:
    pixels: np.ndarray
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """One per loaded model and event loop; `predict` may be awaited from many requests."""

    def __init__(
        self, model: LoadedModel, *, max_wait: float, max_batch: int, executor: ThreadPoolExecutor
    ) -> None:
        self.model = model
        self.max_wait = max_wait
        self.max_batch = max_batch
        self.executor = executor
        self._pending: list[_Pending] = []
        self._images = 0
        self._flush_handle: asyncio.TimerHandle | None = None

    async def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for an N×28×28 batch, computed together with its neighbours."""
        loop = asyncio.get_running_loop()
        if self.max_wait <= 0:
            return await loop.run_in_executor(self.executor, self._run, pixels)
        future = loop.create_future()
        self._pending.append(_Pending(pixels, future))
        self._images += len(pixels)
        if self._images >= self.max_batch:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(self.max_wait, self._flush)
        return await future

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending, self._images = self._pending, [], 0
        if batch:
            asyncio.get_running_loop().create_task(self._answer(batch))

    async def _answer(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        stacked = np.concatenate([item.pixels for item in batch])
        try:
            probabilities = await loop.run_in_executor(self.executor, self._run, stacked)
        except Exception as error:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        start = 0
        for item in batch:
            end = start + len(item.pixels)
            if not item.future.done():
                item.future.set_result(probabilities[start:end])
            start = end

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        count = len(pixels)
        size = padded_size(count, self.max_batch)
        if size > count:
            padding = np.zeros((size - count, *pixels.shape[1:]), dtype=pixels.dtype)
            pixels = np.concatenate([pixels, padding])
        return self.model.predict(pixels)[:count]

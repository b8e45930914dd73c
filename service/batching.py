"""Request-level micro-batching: concurrent predictions for one model become one call.

Like TensorFlow Serving's batching, with one refinement for latency: requests announce
themselves when they start (`arriving`), so a batch is sent as soon as every announced request
has its images ready, at `max_batch` images, or after `max_wait` at the latest. A lone request
therefore never waits, and under load the requests that arrive together share one call. The
batch is padded to a power of two so the compiled function is not retraced per size.
"""

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.inference import LoadedModel


def padded_size(count: int, max_batch: int) -> int:
    """The smallest power of two that holds `count`, capped at `max_batch`."""
    size = 1
    while size < count:
        size *= 2
    return min(size, max(max_batch, count))


@dataclass
class Ticket:
    """A request's place in the batcher's count of images still to come."""

    handed_in: bool = False


@dataclass
class _Pending:
    pixels: np.ndarray
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """One per loaded model; `predict` may be awaited from many requests of one event loop."""

    def __init__(
        self,
        model: "LoadedModel",
        *,
        max_wait: float,
        max_batch: int,
        executor: ThreadPoolExecutor,
    ) -> None:
        self.model = model
        self.max_wait = max_wait
        self.max_batch = max_batch
        self.executor = executor
        self._pending: list[_Pending] = []
        self._images = 0
        self._expected = 0  # Requests announced that have not handed in their images yet.
        self._flush_handle: asyncio.TimerHandle | None = None

    @asynccontextmanager
    async def arriving(self) -> AsyncIterator[Ticket]:
        """Announce a request that is reading its images; pass the ticket to `predict`."""
        ticket = Ticket()
        self._expected += 1
        try:
            yield ticket
        finally:
            if not ticket.handed_in:  # It failed before predicting: stop waiting for it.
                self._expected -= 1
                if self._expected == 0 and self._pending:
                    self._flush()

    async def predict(self, pixels: np.ndarray, ticket: Ticket | None = None) -> np.ndarray:
        """Class probabilities for an N×28×28 batch, computed together with its neighbours."""
        if ticket is not None:
            ticket.handed_in = True
            self._expected -= 1
        loop = asyncio.get_running_loop()
        if self.max_wait <= 0:
            return await loop.run_in_executor(self.executor, self._run, pixels)
        future = loop.create_future()
        self._pending.append(_Pending(pixels, future))
        self._images += len(pixels)
        if self._images >= self.max_batch or self._expected <= 0:
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

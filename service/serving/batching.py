"""Request-level micro-batching: concurrent predictions for one model become one call.

Like TensorFlow Serving's batching, with two refinements for latency. While the model is busy,
requests that hand in their images queue up, and the next call takes them all as soon as it is
free: under load the batch grows by itself to what arrived during one call, with no fixed wait.
While the model is idle, requests announce themselves when they start (`arriving`), so a batch
is sent as soon as every announced request has its images ready, at `max_batch` images, or
after `max_wait` at the latest; a lone request therefore never waits. Each batch is padded to a
power of two so the compiled function is not retraced per size.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from service.metrics import MODEL_CALL_IMAGES, MODEL_CALL_SECONDS


class Predictor(Protocol):
    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for an N×28×28 batch, in one call."""
        ...


def padded_size(count: int, max_batch: int) -> int:
    """The smallest power of two that holds `count`, capped at `max_batch`."""
    size = 1
    while size < count:
        size *= 2
    return min(size, max(max_batch, count))


def batch_sizes(max_batch: int) -> tuple[int, ...]:
    """Every size `padded_size` sends to the model: the ones to compile before serving."""
    return tuple(sorted({padded_size(count, max_batch) for count in range(1, max_batch + 1)}))


@dataclass
class Ticket:
    """A request's place in the batcher's count of images still to come."""

    handed_in: bool = False


class Answer(NamedTuple):
    probabilities: np.ndarray
    batch_images: int  # How many images, this request's included, shared the model call.


@dataclass
class _Pending:
    pixels: np.ndarray
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """One per loaded model; `predict` may be awaited from many requests of one event loop."""

    def __init__(
        self,
        model: Predictor,
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
        self._call: asyncio.Task | None = None  # The model call in progress, if any.

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
                self._consider()

    async def predict(self, pixels: np.ndarray, ticket: Ticket | None = None) -> Answer:
        """Class probabilities for an N×28×28 batch, computed together with its neighbours."""
        if ticket is not None:
            ticket.handed_in = True
            self._expected -= 1
        loop = asyncio.get_running_loop()
        if self.max_wait <= 0:
            probabilities = await loop.run_in_executor(self.executor, self._run, pixels)
            return Answer(probabilities, len(pixels))
        future = loop.create_future()
        self._pending.append(_Pending(pixels, future))
        self._images += len(pixels)
        self._consider()
        return await future

    def _consider(self) -> None:
        """Send a batch if the model is free and waiting would not add to it."""
        if self._call is not None or not self._pending:
            return  # A busy model sends the queued requests when its call returns.
        if self._images >= self.max_batch or self._expected <= 0:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self.max_wait, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        taken, images = 0, 0
        for item in self._pending:
            if taken and images + len(item.pixels) > self.max_batch:
                break
            taken, images = taken + 1, images + len(item.pixels)
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        self._images -= images
        self._call = asyncio.get_running_loop().create_task(self._answer(batch, images))

    async def _answer(self, batch: list[_Pending], images: int) -> None:
        loop = asyncio.get_running_loop()
        stacked = np.concatenate([item.pixels for item in batch])
        try:
            probabilities = await loop.run_in_executor(self.executor, self._run, stacked)
        except Exception as error:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        else:
            start = 0
            for item in batch:
                end = start + len(item.pixels)
                if not item.future.done():
                    item.future.set_result(Answer(probabilities[start:end], images))
                start = end
        finally:
            self._call = None
        if self._pending:  # They waited for this call already.
            self._flush()

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        count = len(pixels)
        size = padded_size(count, self.max_batch)
        if size > count:
            padding = np.zeros((size - count, *pixels.shape[1:]), dtype=pixels.dtype)
            pixels = np.concatenate([pixels, padding])
        started = time.perf_counter()
        probabilities = self.model.predict(pixels)[:count]
        MODEL_CALL_SECONDS.observe(time.perf_counter() - started)
        MODEL_CALL_IMAGES.observe(count)
        return probabilities

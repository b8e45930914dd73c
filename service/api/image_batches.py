"""A request's images or arrays decoded into one batch, on the event loop or in a thread.

Work small enough to cost less than a thread hop runs on the event loop, the rest in a thread.
Shared by POST /predict and TensorFlow Serving's :predict; errors are a 413 (over a budget)
or a 422 that names the instance.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from fastapi import HTTPException, status
from fastapi.concurrency import run_in_threadpool

from service.api.uploads import payload_too_large
from service.serving.images import ImageTooLargeError, InvalidImageError
from service.serving.instances import Instance, decoding_pixels, open_instances, to_batch
from service.settings import Settings

# Reading a header costs time in proportion to the file, not to its pixels (5 MB of empty PNG
# chunks took 1.6 s), so only bodies this small are opened inline; a 28×28 PNG takes under 1 kB.
INLINE_OPEN_BYTES = 4096
# Decoding costs time in proportion to the pixels the header announces, counted on the padded
# square (784 for a 28×28 instance): a 177-byte PNG can hold 50,000 rows.
INLINE_DECODE_PIXELS = 4096


@contextmanager
def _image_errors() -> Iterator[None]:
    """An instance that cannot be read, as a 413 (over a budget) or a 422."""
    try:
        yield
    except ImageTooLargeError as error:
        raise payload_too_large(str(error)) from None
    except InvalidImageError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None


def _open_all(uploads: list, settings: Settings) -> list[Instance]:
    """The uploads with their headers read, refused together past the request's budget."""
    with _image_errors():
        return open_instances(
            uploads, max_pixels=settings.max_image_pixels, max_side=settings.max_image_side
        )


def _to_batch(instances: list[Instance], invert: bool | None) -> np.ndarray:
    """The instances decoded into one N×28×28 batch scaled to [0, 1]."""
    with _image_errors():
        return to_batch(instances, invert=invert)


def _decode_all(uploads_of: Callable[[], list], settings: Settings, invert: bool | None):
    return _to_batch(_open_all(uploads_of(), settings), invert)


async def decoded_batch(
    uploads_of: Callable[[], list], body_bytes: int, settings: Settings, invert: bool | None
) -> np.ndarray:
    """The uploads that `uploads_of()` reads out of a body of `body_bytes`, as one batch.

    The uploads are image files, {"b64": ...} objects and 28×28 arrays; `uploads_of` runs in
    the thread too when the body is large, since parsing it is work as well.
    """
    if body_bytes > INLINE_OPEN_BYTES:
        return await run_in_threadpool(_decode_all, uploads_of, settings, invert)
    instances = _open_all(uploads_of(), settings)
    if decoding_pixels(instances) <= INLINE_DECODE_PIXELS:
        return _to_batch(instances, invert)
    return await run_in_threadpool(_to_batch, instances, invert)

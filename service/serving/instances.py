"""A request's instances (image files, {"b64": ...} objects, 28×28 arrays) as one batch.

Independent of the protocol that carried them, so any route that takes images or arrays can
use it. In two steps, so a caller can decide where the work runs: `open_instances` reads each
image's header and refuses the request past its pixel budget before a pixel is decoded;
`to_batch` decodes. Errors name the instance they are about.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from PIL import Image

from service.architecture import IMAGE_SIZE
from service.serving.images import (
    ImageTooLargeError,
    InvalidImageError,
    base64_bytes,
    open_image,
    padded_pixels,
    parse_array,
    to_model_input,
)

# An instance ready for decoding: an image whose header is read, or an array.
Instance = Image.Image | list | np.ndarray


@contextmanager
def _naming(index: int) -> Iterator[None]:
    """Say which instance an error is about."""
    try:
        yield
    except (ImageTooLargeError, InvalidImageError) as error:
        raise type(error)(f"instance {index}: {error}") from None


def open_instance(upload: object, *, max_pixels: int, max_side: int | None) -> Instance:
    """An upload with its image's header read and checked against the budget, not decoded."""
    if isinstance(upload, dict):
        if set(upload) != {"b64"} or not isinstance(upload["b64"], str):
            raise InvalidImageError('an object instance must be {"b64": "<base64 image>"}')
        upload = base64_bytes(upload["b64"])
    if isinstance(upload, bytes):
        return open_image(upload, max_pixels=max_pixels, max_side=max_side)
    if not isinstance(upload, list | np.ndarray):
        raise InvalidImageError('an instance must be a 28×28 array or {"b64": ...}')
    return upload


def open_instances(
    uploads: Sequence[object], *, max_pixels: int, max_side: int | None
) -> list[Instance]:
    """The uploads opened, refused together when decoding them all would pass `max_pixels`."""
    instances = []
    for index, upload in enumerate(uploads):
        with _naming(index):
            instances.append(open_instance(upload, max_pixels=max_pixels, max_side=max_side))
    # Each image is checked against the budget alone; so is the whole request, or 256 tiny
    # files that each announce 4096×4096 would cost seconds of decoding.
    total = decoding_pixels(instances)
    if total > max_pixels:
        raise ImageTooLargeError(
            f"the images add up to {total:,} pixels (as padded squares), over the "
            f"{max_pixels:,} one request may decode: send fewer or smaller ones"
        )
    return instances


def decoding_pixels(instances: Sequence[Instance]) -> int:
    """What decoding the instances costs, in pixels, counted on the squares images pad to."""
    return sum(
        padded_pixels(instance) if isinstance(instance, Image.Image) else IMAGE_SIZE**2
        for instance in instances
    )


def to_batch(instances: Sequence[Instance], *, invert: bool | None) -> np.ndarray:
    """The instances decoded into one N×28×28 batch scaled to [0, 1]."""
    pixels = []
    for index, instance in enumerate(instances):
        with _naming(index):
            if isinstance(instance, Image.Image):
                pixels.append(to_model_input(instance, invert=invert))
            else:
                pixels.append(parse_array(instance))
    return np.stack(pixels)

"""Turning uploads into model input, and serving trained models from a bounded cache."""

import base64
import binascii
import gc
import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.architecture import FLOAT_BYTES, IMAGE_SIZE
from service.datasets import CLASS_NAMES
from service.training import load_model_bytes

if TYPE_CHECKING:
    from service.batching import MicroBatcher

ROTATABLE_FORMATS = frozenset({"JPEG", "MPO", "TIFF", "WEBP", "HEIF"})

# Fashion-MNIST shows light garments on a black background; a brighter border means the
# picture is the other way round.
LIGHT_BACKGROUND = 127.5

# Every gray level's model input, looked up per pixel: the training data's scaling to [0, 1].
LEVELS = np.arange(256, dtype=np.float32) / 255.0
INVERTED_LEVELS = LEVELS[::-1].copy()


def freeze_heap() -> None:
    """Keep what is alive now (TensorFlow's modules, loaded models) out of later collections.

    A full collection walks every tracked object, and a process with Keras loaded holds about
    400,000: each took 150–200 ms with the GIL held and freed nothing (bench/gc_pause.py).
    Frozen objects are skipped. Unfreezing first lets a model evicted since be collected.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class InvalidImageError(ValueError):
    """The input is not an image, or not one of the shapes a model takes."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than the configured limit."""


def decode_image(data: bytes, *, max_pixels: int, invert: bool | None = None) -> np.ndarray:
    """Any Pillow-readable image → a 28×28 float32 array scaled like the training data."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between one and two times its limit; refuse all of it.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max_pixels
            image = Image.open(io.BytesIO(data))
            # Reading the header is cheap; the pixels are decoded only below the limit.
            if image.width * image.height <= max_pixels:
                image.draft("L", (IMAGE_SIZE * 2, IMAGE_SIZE * 2))
                if image.format in ROTATABLE_FORMATS:  # Phone photos carry their rotation.
                    image = ImageOps.exif_transpose(image)
                image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(f"{error}: scale the image down") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(
            f"cannot decode the upload as an image ({error}): send a PNG or JPEG"
        ) from None
    if image.width * image.height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {image.width}×{image.height}, over the limit of "
            f"{max_pixels:,} pixels: scale it down"
        )
    return _to_model_pixels(image, invert)


def _to_model_pixels(image: Image.Image, invert: bool | None) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas are background: flatten them onto white before going gray.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    gray = image if image.mode == "L" else image.convert("L")

    levels = np.asarray(gray)
    background_level = _median(np.concatenate([levels[0], levels[-1], levels[:, 0], levels[:, -1]]))
    if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
        # Pad to a square in the background colour so the garment keeps its proportions.
        side = max(gray.size)
        square = Image.new("L", (side, side), round(background_level))
        square.paste(gray, ((side - gray.width) // 2, (side - gray.height) // 2))
        levels = np.asarray(square.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS))

    if invert is None:
        invert = background_level > LIGHT_BACKGROUND
    return (INVERTED_LEVELS if invert else LEVELS)[levels]


def _median(values: np.ndarray) -> float:
    """np.median's answer for a short array, without its general-purpose overhead."""
    ordered = np.sort(values)
    middle = len(ordered) // 2
    return (float(ordered[(len(ordered) - 1) // 2]) + float(ordered[middle])) / 2


def decode_b64(text: str, *, max_pixels: int, invert: bool | None = None) -> np.ndarray:
    """A base64-encoded image, as TensorFlow Serving's {"b64": ...} carries it."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidImageError(f"b64 is not valid base64 ({error})") from None
    return decode_image(data, max_pixels=max_pixels, invert=invert)


def parse_array(values: object) -> np.ndarray:
    """A 28×28 (or 28×28×1) nested list: 0–255 integers or 0–1 floats."""
    try:
        array = np.asarray(values)
    except ValueError:
        raise InvalidImageError("the array is ragged: every row needs 28 values") from None
    if array.shape == (IMAGE_SIZE, IMAGE_SIZE, 1):
        array = array[..., 0]
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise InvalidImageError(f"the array has shape {list(array.shape)}; expected [28, 28]")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise InvalidImageError("the array must hold numbers")
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise InvalidImageError("integer pixels must be between 0 and 255")
        return array.astype(np.float32) / 255.0
    if not np.all(np.isfinite(array)) or array.min() < 0 or array.max() > 1:
        raise InvalidImageError("float pixels must be between 0 and 1 (send 0–255 as integers)")
    return array.astype(np.float32)


@dataclass
class LoadedModel:
    experiment_id: int
    sha256: str
    model: object
    size_bytes: int
    batcher: "MicroBatcher | None" = None

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of 28×28 images, in one compiled call."""
        return np.asarray(self.model.predict_on_batch(pixels[..., np.newaxis]))


class ModelCache:
    """Loaded, warmed-up models, least recently used evicted past `capacity` or `max_bytes`."""

    def __init__(self, capacity: int, max_bytes: int, warm_up_sizes: Sequence[int] = (1,)) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        # Each batch size is compiled at load, so no request pays for a compilation (JAX compiles
        # every shape; TensorFlow generalizes after two).
        self.warm_up_sizes = warm_up_sizes
        self._models: OrderedDict[int, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[int, threading.Lock] = {}

    def get(self, experiment_id: int, sha256: str, fetch: Callable[[], bytes]) -> LoadedModel:
        """The model with this checksum, loaded with `fetch()` on a miss or after a change."""
        with self._lock:
            cached = self._models.get(experiment_id)
            if cached is not None and cached.sha256 == sha256:
                self._models.move_to_end(experiment_id)
                return cached
            loading = self._loading.setdefault(experiment_id, threading.Lock())
        # One loader per model; requests for other models are not held up meanwhile.
        with loading:
            with self._lock:
                cached = self._models.get(experiment_id)
                if cached is not None and cached.sha256 == sha256:
                    return cached
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
            freeze_heap()
            return loaded

    def holds(self, experiment_id: int, sha256: str) -> bool:
        """Whether `get` would answer at once, without loading."""
        cached = self._models.get(experiment_id)
        return cached is not None and cached.sha256 == sha256

    def cached_bytes(self) -> int:
        return sum(model.size_bytes for model in self._models.values())

    def cached_ids(self) -> list[int]:
        with self._lock:
            return list(self._models)


def describe(probabilities: np.ndarray) -> list[dict]:
    """The response entry for each row of class probabilities."""
    predictions = []
    for row in probabilities:
        label = int(np.argmax(row))
        predictions.append(
            {
                "label": label,
                "class_name": CLASS_NAMES[label],
                "confidence": float(row[label]),
                "probabilities": [float(p) for p in row],
            }
        )
    return predictions

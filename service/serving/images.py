"""Turning uploads into model input: images opened within a pixel budget, any mode, padded,
resized and scaled exactly as the training images were; JSON arrays checked.

Decoding is split in two so a caller can decide where the work runs: `open_image` reads the
header only and refuses an image over the budget before a single pixel is decoded;
`to_model_input` does the decoding.
"""

import base64
import binascii
import io
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.architecture import IMAGE_SIZE

ROTATABLE_FORMATS = frozenset({"JPEG", "MPO", "TIFF", "WEBP", "HEIF"})

# Fashion-MNIST shows light garments on a black background; a brighter border means the
# picture is the other way round.
LIGHT_BACKGROUND = 127.5

# Every gray level's model input, looked up per pixel: the training data's scaling to [0, 1].
LEVELS = np.arange(256, dtype=np.float32) / 255.0
INVERTED_LEVELS = LEVELS[::-1].copy()

UNSIGNED_16_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
UNSIGNED_16_BIT_MAX = 65535
ADVICE = "send a PNG or JPEG"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG allows one colour profile, but Pillow inflates every iCCP chunk it meets, up to 1 MB out
# of about 1 kB each: 5 MB of them took 11 s to open. Searching the file for the chunk type is
# fast, and compressed pixels hold those 4 bytes by chance about once in 4 GB, so more than a
# few means repeated chunks.
MAX_PNG_PROFILES = 4


def _lightness_to_gray() -> list[int]:
    """For each 8-bit CIELAB lightness, the sRGB gray level that looks as light."""
    lightness = np.arange(256) / 255 * 100
    luminance = np.where(lightness > 8, ((lightness + 16) / 116) ** 3, lightness / 903.3)
    srgb = np.where(
        luminance <= 0.0031308, 12.92 * luminance, 1.055 * luminance ** (1 / 2.4) - 0.055
    )
    return np.rint(srgb * 255).astype(int).tolist()


LIGHTNESS_TO_GRAY = _lightness_to_gray()


class InvalidImageError(ValueError):
    """The input is not an image, or not one of the shapes a model takes."""


class ImageTooLargeError(ValueError):
    """The image is over the size budget."""


@contextmanager
def _decoding() -> Iterator[None]:
    """Turn whatever Pillow raises on a bad file into InvalidImageError.

    Pillow parses untrusted bytes with dozens of format plugins, and a malformed file surfaces
    as nearly any exception: NotImplementedError for a DDS pixel format it lacks, TypeError for
    a TIFF tag of an unexpected type, struct.error, IndexError, KeyError... Each says the file
    cannot be read, not that the service failed, so each is the client's 422.
    """
    try:
        yield
    except (InvalidImageError, ImageTooLargeError, MemoryError):
        raise  # Ours already say what to do; running out of memory is the server's state.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(f"{error}: scale the image down") from None
    except UnidentifiedImageError:
        # Pillow's own message names the in-memory file object (`<_io.BytesIO at 0x…>`).
        raise InvalidImageError(
            f"cannot decode the upload as an image: no format we read recognizes it; {ADVICE}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # The types Pillow raises on purpose, with a message worth passing on.
        raise InvalidImageError(
            f"cannot decode the upload as an image ({error}): {ADVICE}"
        ) from None
    except Exception:
        raise InvalidImageError(
            f"cannot decode the upload as an image (the file is malformed): {ADVICE}"
        ) from None


def open_image(data: bytes, *, max_pixels: int, max_side: int | None = None) -> Image.Image:
    """The image's header, read without decoding a pixel; refused when over the budget.

    `max_pixels` bounds the square the image is padded to, max(width, height)², not
    width × height: a 1×50,000 picture would become 2.5 billion pixels.
    """
    if not data:
        raise InvalidImageError(f"the image is empty: {ADVICE}")
    if data.startswith(PNG_SIGNATURE) and data.count(b"iCCP") > MAX_PNG_PROFILES:
        raise InvalidImageError(
            f"the PNG repeats its colour profile (iCCP), which PNG forbids: {ADVICE}"
        )
    # Pillow's own guard, behind ours, bounds what it decodes while opening (an ICO's
    # frames): it refuses past twice the limit.
    Image.MAX_IMAGE_PIXELS = max_pixels
    with _decoding():
        image = Image.open(io.BytesIO(data))
    _check_budget(image.size, max_pixels=max_pixels, max_side=max_side)
    return image


def _check_budget(size: tuple[int, int], *, max_pixels: int, max_side: int | None) -> None:
    """Refuse an image of this size, with the numbers, if decoding it would cost too much."""
    width, height = size  # Pillow refuses to open an image with no pixels.
    side = max(width, height)
    if max_side is not None and side > max_side:
        raise ImageTooLargeError(
            f"the image is {width}×{height}, over the limit of {max_side:,} pixels on its "
            "longest side: scale it down"
        )
    if side * side > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}×{height}; padded to a {side}×{side} square it has "
            f"{side * side:,} pixels, over the limit of {max_pixels:,}: scale it down"
        )


def padded_pixels(image: Image.Image) -> int:
    """What decoding `image` costs, in pixels: those of the square it is padded to."""
    return max(image.size) ** 2


def to_model_input(image: Image.Image, *, invert: bool | None = None) -> np.ndarray:
    """An opened image → a 28×28 float32 array scaled like the training data."""
    with _decoding():
        image.draft("L", (IMAGE_SIZE * 2, IMAGE_SIZE * 2))  # JPEG decodes at a smaller scale.
        if image.format in ROTATABLE_FORMATS:  # Phone photos carry their rotation.
            image = ImageOps.exif_transpose(image)
        image.load()
        gray = _to_gray(image)

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


def decode_image(
    data: bytes, *, max_pixels: int, max_side: int | None = None, invert: bool | None = None
) -> np.ndarray:
    """Any Pillow-readable image → a 28×28 float32 array scaled like the training data."""
    image = open_image(data, max_pixels=max_pixels, max_side=max_side)
    return to_model_input(image, invert=invert)


def _to_gray(image: Image.Image) -> Image.Image:
    """Any mode → 8-bit gray ("L"), transparent areas white, deeper pixels scaled, not clipped."""
    mode = image.mode
    if mode in UNSIGNED_16_BIT_MODES or mode in ("I", "F"):
        return _scaled_to_gray(image)
    if mode == "LAB":  # Its L band is lightness; Pillow has no conversion to gray.
        return image.getchannel("L").point(LIGHTNESS_TO_GRAY)
    if image.has_transparency_data:
        return _on_white(image)
    # Pillow takes HSV and CMYK to gray by way of RGB, YCbCr by its luma; a mode it cannot
    # convert raises ValueError, a 422.
    return image if mode == "L" else image.convert("L")


def _scaled_to_gray(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float pixels → 0–255, by their type's range or their own."""
    values = np.asarray(image)
    if not np.isfinite(values).all():
        raise InvalidImageError("the image holds NaN or infinite pixel values")
    low, high = _value_range(image.mode, values)
    levels = values.astype(np.float32)
    levels -= low
    levels *= 255 / ((high - low) or 1)  # One value throughout, outside the type's range: 0.
    return Image.fromarray(np.rint(levels, out=levels).astype(np.uint8))


def _value_range(mode: str, values: np.ndarray) -> tuple[float, float]:
    """The values that become black and white: the type's range, unless the pixels leave it."""
    if mode in UNSIGNED_16_BIT_MODES:
        return 0, UNSIGNED_16_BIT_MAX
    low, high = float(values.min()), float(values.max())
    # 32-bit integers are mostly 16-bit samples widened (PNG, PPM); floats mostly 0–1.
    nominal = UNSIGNED_16_BIT_MAX if mode == "I" else 1
    if low >= 0 and high <= nominal:
        return 0, nominal
    return low, high


def _on_white(image: Image.Image) -> Image.Image:
    """Transparent areas are background: flatten them onto white."""
    gray_alpha = image.convert("LA")
    gray = Image.new("L", image.size, 255)
    gray.paste(gray_alpha.getchannel("L"), mask=gray_alpha.getchannel("A"))
    return gray


def _median(values: np.ndarray) -> float:
    """np.median's answer for a short array, without its general-purpose overhead."""
    ordered = np.sort(values)
    middle = len(ordered) // 2
    return (float(ordered[(len(ordered) - 1) // 2]) + float(ordered[middle])) / 2


def base64_bytes(text: str) -> bytes:
    """The bytes of a base64-encoded image, as TensorFlow Serving's {"b64": ...} carries it."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidImageError(f"b64 is not valid base64 ({error})") from None


def parse_array(values: object) -> np.ndarray:
    """A 28×28 (or 28×28×1) nested list: 0–255 integers or 0–1 floats."""
    try:
        array = np.asarray(values)
    except ValueError:
        raise InvalidImageError(
            "the array is ragged or nested too deeply: send 28 rows of 28 numbers"
        ) from None
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

"""Hostile and unusual images: each is refused with a 4xx or classified, quickly, within memory.

Every file is built here, with Pillow or by hand: bombs whose headers claim billions of pixels,
every mode Pillow saves, animations, broken and mislabelled files, files that make Pillow's
parsers raise unusual exceptions.
"""

import base64
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import httpx2 as httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from service.api import create_app
from service.db import create_db_engine, create_session_factory
from service.ml.model import build_model, save_model_bytes
from service.models import Experiment, ExperimentStatus, TrainedModel, utcnow
from service.serving.images import (
    ImageTooLargeError,
    InvalidImageError,
    decode_image,
    open_image,
    to_model_input,
)
from service.settings import Settings
from service.spec import ExperimentCreate
from tests.conftest import ROOT, free_port, upgrade, wait_for_api

# Pillow warns, and reads on, when an icon's frame is not the size its directory gives; the
# service runs with warnings as warnings, and so does this module for that one.
pytestmark = pytest.mark.filterwarnings("ignore:Image was not the expected size:UserWarning")

LIMITS = {"max_pixels": 4096 * 4096, "max_side": 4096}
MEBIBYTE = 1024 * 1024


# Building files.


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def garment_levels(size: int = 28) -> np.ndarray:
    """A light, asymmetric shape on black, like a Fashion-MNIST picture."""
    levels = np.zeros((size, size), np.uint8)
    levels[size // 5 : size * 4 // 5, size // 4 : size * 3 // 4] = 200
    levels[size // 5 : size // 3, size // 4 :] = 255  # A sleeve on one side only.
    return levels


def garment(mode: str = "L", size: int = 28) -> Image.Image:
    return Image.fromarray(garment_levels(size)).convert(mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_chunks(chunks: bytes, image: Image.Image | None = None) -> bytes:
    """A PNG with `chunks` inserted right after its header chunk."""
    data = encoded(image or garment(), "PNG")
    header_end = 8 + 25  # The signature, then IHDR: length, type, 13 bytes, CRC.
    return data[:header_end] + chunks + data[header_end:]


def png_claiming(width: int, height: int, mode: str = "L") -> bytes:
    """A small PNG whose header claims another size."""
    data = bytearray(encoded(garment(mode), "PNG"))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(garment(), "JPEG"))
    frame = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(garment(), "GIF"))
    struct.pack_into("<HH", data, 6, width, height)  # The logical screen.
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # After the colour table.
    while data[position] == 0x21:  # Extension blocks: a label, then sized sub-blocks.
        position += 2
        while data[position]:
            position += data[position] + 1
        position += 1
    assert data[position] == 0x2C  # The image descriptor.
    struct.pack_into("<HH", data, position + 5, width, height)
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(garment(), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def ico_holding(frame: bytes) -> bytes:
    """An icon whose directory says 16×16, holding `frame` (a PNG or a BMP without its header)."""
    directory = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(frame), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + directory + frame


def tiff_with_tags(tags: dict[int, tuple[int, int]], extra: bytes = b"") -> bytes:
    """A small little-endian TIFF with tags of its first directory retyped or given new values."""
    data = bytearray(encoded(garment(), "TIFF") + extra)
    directory = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, directory)[0]):
        position = directory + 2 + 12 * entry
        tag = struct.unpack_from("<H", data, position)[0]
        if tag in tags:
            field_type, value = tags.pop(tag)
            struct.pack_into("<HHII", data, position, tag, field_type, 1, value)
    assert not tags, f"no tags {list(tags)}"
    return bytes(data)


def tiff_claiming(width: int, height: int) -> bytes:
    long_type = 4
    return tiff_with_tags({256: (long_type, width), 257: (long_type, height)})


def tiff_with_rational_strip_offsets() -> bytes:
    """StripOffsets typed RATIONAL: Pillow's TIFF reader fails with a TypeError."""
    rational_type, end = 5, len(encoded(garment(), "TIFF"))
    return tiff_with_tags({273: (rational_type, end)}, extra=struct.pack("<II", 8, 1))


def dds_with_unknown_pixel_format() -> bytes:
    """Pillow's DDS reader fails with NotImplementedError."""
    fourcc_flag, texture_caps = 0x4, 0x1000
    header = struct.pack(
        "<4s7I44s2I4s5I5I",
        *(b"DDS ", 124, 0x1007, 4, 4, 16, 0, 0, bytes(44)),
        *(32, fourcc_flag, b"ABCD", 0, 0, 0, 0, 0),
        *(texture_caps, 0, 0, 0, 0),
    )
    return header + bytes(64)


def frames(image_format: str, **options) -> bytes:
    """Three frames: the garment, then two that are not."""
    first, *others = [garment(), Image.new("L", (28, 28), 255), Image.new("L", (28, 28), 90)]
    return encoded(first, image_format, save_all=True, append_images=others, **options)


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(garment("RGB"), "JPEG", exif=exif, quality=95)


def sixteen_bit(levels: np.ndarray) -> np.ndarray:
    return levels.astype(np.uint16) * 257


def lab_tiff() -> bytes:
    return encoded(garment("RGB").convert("LAB"), "TIFF")


def deep_json(depth: int) -> bytes:
    return b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"


# The corpus.

TALL_PNG = encoded(Image.new("L", (1, 50_000)), "PNG")
TALL_BMP = encoded(Image.new("L", (1, 50_000)), "BMP")


class Case(NamedTuple):
    name: str
    body: bytes
    content_type: str
    status: int


def image_case(name: str, body: bytes, status: int = 200, content_type: str = "") -> Case:
    return Case(name, body, content_type or "image/png", status)


def corpus() -> list[Case]:
    rgb = garment("RGB")
    transparent = garment("RGBA")
    transparent.putalpha(Image.fromarray(garment_levels()))
    return [
        # Every mode Pillow saves, in a format that keeps it.
        image_case("mode 1 PNG", encoded(garment("1"), "PNG")),
        image_case("mode L PNG", encoded(garment(), "PNG")),
        image_case("mode P PNG", encoded(rgb.convert("P"), "PNG")),
        image_case("mode P PNG with transparency", encoded(garment("P"), "PNG", transparency=0)),
        image_case("mode RGB PNG", encoded(rgb, "PNG")),
        image_case("mode RGBA PNG", encoded(transparent, "PNG")),
        image_case("mode LA PNG", encoded(transparent.convert("LA"), "PNG")),
        image_case("mode PA TIFF", encoded(transparent.convert("PA"), "TIFF")),
        image_case(
            "mode CMYK JPEG", encoded(rgb.convert("CMYK"), "JPEG"), content_type="image/jpeg"
        ),
        image_case("mode CMYK TIFF", encoded(rgb.convert("CMYK"), "TIFF")),
        image_case("mode YCbCr TIFF", encoded(rgb.convert("YCbCr"), "TIFF")),
        image_case("mode LAB TIFF", lab_tiff()),
        image_case("mode RGBX TIFF", encoded(rgb.convert("RGBX"), "TIFF")),
        image_case(
            "mode I TIFF",
            encoded(Image.fromarray(sixteen_bit(garment_levels()).astype(np.int32)), "TIFF"),
        ),
        image_case("mode I;16 PNG", encoded(Image.fromarray(sixteen_bit(garment_levels())), "PNG")),
        image_case(
            "mode I;16B TIFF",
            encoded(Image.fromarray(sixteen_bit(garment_levels()).astype(">u2")), "TIFF"),
        ),
        image_case(
            "mode F TIFF",
            encoded(Image.fromarray(garment_levels().astype(np.float32) / 255), "TIFF"),
        ),
        image_case(
            "16-bit PPM (mode I)", encoded(Image.fromarray(sixteen_bit(garment_levels())), "PPM")
        ),
        image_case(
            "NaN pixels in an F TIFF", encoded(Image.new("F", (28, 28), float("nan")), "TIFF"), 422
        ),
        # Other formats, sizes and shapes.
        image_case("JPEG", encoded(rgb, "JPEG"), content_type="image/jpeg"),
        image_case("progressive JPEG", encoded(garment("RGB", 200), "JPEG", progressive=True)),
        image_case("GIF", encoded(garment(), "GIF"), content_type="image/gif"),
        image_case("BMP", encoded(rgb, "BMP")),
        image_case("WebP", encoded(transparent, "WEBP"), content_type="image/webp"),
        image_case("TGA", encoded(rgb, "TGA")),
        image_case("ICO", encoded(transparent, "ICO")),
        image_case("large photo", encoded(garment("RGB", 1000), "JPEG"), content_type="image/jpeg"),
        image_case("wide strip within the limits", encoded(Image.new("L", (4096, 1)), "PNG")),
        image_case("animated GIF", frames("GIF"), content_type="image/gif"),
        image_case("animated PNG", frames("PNG")),
        image_case("multi-frame TIFF", frames("TIFF")),
        image_case("EXIF-rotated JPEG", exif_rotated_jpeg(), content_type="image/jpeg"),
        # Mislabelled.
        image_case("PNG sent as image/jpeg", encoded(garment(), "PNG"), content_type="image/jpeg"),
        image_case("JPEG sent as image/gif", encoded(rgb, "JPEG"), content_type="image/gif"),
        image_case("text sent as image/png", b"this is not a picture", 422),
        Case("PNG sent as text/plain", encoded(garment(), "PNG"), "text/plain", 415),
        # Broken.
        image_case("empty body", b"", 422),
        image_case("truncated PNG", encoded(garment(), "PNG")[:-40], 422),
        image_case("truncated JPEG", encoded(garment("RGB", 200), "JPEG")[:600], 422),
        image_case("zero-size PNG", png_claiming(0, 0), 422),
        image_case("DDS of an unknown pixel format", dds_with_unknown_pixel_format(), 422),
        image_case("TIFF with a RATIONAL strip offset", tiff_with_rational_strip_offsets(), 422),
        image_case(
            "huge zTXt chunk",
            png_with_chunks(png_chunk(b"zTXt", b"k\0\0" + zlib.compress(bytes(8 * MEBIBYTE)))),
            422,
        ),
        image_case(
            "huge iCCP chunk",
            png_with_chunks(png_chunk(b"iCCP", b"p\0\0" + zlib.compress(bytes(8 * MEBIBYTE)))),
            422,
        ),
        image_case(
            "repeated iCCP chunks",
            png_with_chunks(png_chunk(b"iCCP", b"p\0\0" + zlib.compress(bytes(MEBIBYTE))) * 500),
            422,
        ),
        # Bombs: tiny files whose headers claim enormous pictures.
        image_case("tall PNG, 1×50,000", TALL_PNG, 413),
        image_case("wide PNG, 50,000×1", encoded(Image.new("L", (50_000, 1)), "PNG"), 413),
        image_case("PNG claiming 60,000×60,000", png_claiming(60_000, 60_000), 413),
        image_case("palette PNG claiming 30,000×30,000", png_claiming(30_000, 30_000, "P"), 413),
        image_case("JPEG claiming 65,500×65,500", jpeg_claiming(65_500, 65_500), 413),
        image_case("GIF claiming 65,535×65,535", gif_claiming(65_535, 65_535), 413),
        image_case("BMP claiming 100,000×100,000", bmp_claiming(100_000, 100_000), 413),
        image_case("TIFF claiming 28×262,172", tiff_claiming(28, 262_172), 413),
        image_case("16×16 icon holding a 1×50,000 PNG", ico_holding(TALL_PNG), 413),
        image_case("16×16 icon holding a 1×50,000 BMP", ico_holding(TALL_BMP[14:]), 413),
        image_case("TIFF claiming 5,000×5,000", tiff_claiming(5000, 5000), 413),
        # JSON bodies.
        Case(
            "JSON number of 5,000 digits",
            b'{"instances": [' + b"1" * 5000 + b"]}",
            "application/json",
            422,
        ),
        Case("JSON nested 100,000 deep", deep_json(100_000), "application/json", 422),
        Case("JSON nested 500 deep", deep_json(500), "application/json", 422),
        Case(
            "base64 bomb",
            json.dumps(
                {"instances": [{"b64": base64.b64encode(png_claiming(1, 50_000)).decode()}]}
            ).encode(),
            "application/json",
            413,
        ),
    ]


CORPUS = corpus()
CASES = {case.name: case for case in CORPUS}
BOMBS = [case for case in CORPUS if case.status == 413]


# The model that serves them.


@pytest.fixture(scope="module")
def served_database(tmp_path_factory) -> str:
    """A SQLite database with one succeeded experiment and its model, after one training step."""
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'test.db'}"
    upgrade(url)
    spec = ExperimentCreate(conv_layers=1, filters=4, dense_units=[8], seed=1).to_spec()
    model = build_model(spec)
    # A step creates the optimizer's variables, which loading the saved file expects.
    model.fit(np.zeros((8, 28, 28, 1), np.float32), np.zeros(8), verbose=0)
    keras_file = save_model_bytes(model)
    engine = create_db_engine(url)
    with create_session_factory(engine)() as session:
        experiment = Experiment(
            status=ExperimentStatus.SUCCEEDED,
            spec=spec.model_dump(mode="json"),
            summary=spec.summary().as_dict(),
            requested_device="cpu",
            finished_at=utcnow(),
        )
        session.add(experiment)
        session.flush()
        session.add(TrainedModel.of(experiment.id, keras_file))
        session.commit()
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def served(served_database) -> Iterator[TestClient]:
    settings = Settings(database_url=served_database, allowed_hosts=["testserver"], _env_file=None)
    with TestClient(create_app(settings)) as client:
        assert post(client, CASES["mode L PNG"]).status_code == 200  # Loads the model.
        yield client


def post(client: httpx.Client | TestClient, case: Case) -> httpx.Response:
    return client.post("/predict", content=case.body, headers={"content-type": case.content_type})


# The corpus through the API.


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_each_hostile_upload_is_refused_or_classified_quickly(served, case):
    started = time.monotonic()
    response = post(served, case)
    assert time.monotonic() - started < 3
    assert response.status_code == case.status, response.text
    if case.status == 200:
        (prediction,) = response.json()["predictions"]
        assert len(prediction["probabilities"]) == 10
    else:
        assert "0x" not in response.json()["detail"]


@pytest.mark.parametrize(
    "name", ["mode L PNG", "tall PNG, 1×50,000", "DDS of an unknown pixel format", "empty body"]
)
def test_multipart_uploads_get_the_same_answers(served, name):
    case = CASES[name]
    response = served.post("/predict", files={"image": ("upload", case.body, case.content_type)})
    assert response.status_code == case.status, response.text


# Decoding, pixel by pixel.

# Each of these files holds the same picture as the first of its group, in another mode or
# format; lossy ones (JPEG, a palette, resizing) differ a little.
ALIKE = {
    "mode L PNG": [
        *("mode P PNG", "mode RGB PNG", "mode CMYK JPEG", "mode CMYK TIFF", "mode YCbCr TIFF"),
        *("mode LAB TIFF", "mode RGBX TIFF", "mode I TIFF", "mode I;16 PNG", "mode I;16B TIFF"),
        *("mode F TIFF", "16-bit PPM (mode I)", "JPEG", "progressive JPEG", "GIF", "BMP", "TGA"),
        *("large photo", "animated GIF", "animated PNG", "multi-frame TIFF"),
        *("PNG sent as image/jpeg", "JPEG sent as image/gif"),
    ],
    "mode RGBA PNG": [
        *("mode LA PNG", "mode PA TIFF", "mode P PNG with transparency", "WebP", "ICO"),
    ],
}


@pytest.mark.parametrize(
    ("name", "reference"), [(name, first) for first, names in ALIKE.items() for name in names]
)
def test_each_encoding_of_a_picture_decodes_to_that_picture(name, reference):
    expected = decode_image(CASES[reference].body, **LIMITS)
    assert np.abs(decode_image(CASES[name].body, **LIMITS) - expected).mean() < 0.04


def test_bombs_are_refused_from_the_header_with_their_numbers():
    with pytest.raises(ImageTooLargeError, match="1×50000, over the limit of 4,096 pixels"):
        open_image(encoded(Image.new("L", (1, 50_000)), "PNG"), **LIMITS)
    with pytest.raises(ImageTooLargeError, match="28×262172"):
        open_image(tiff_claiming(28, 262_172), **LIMITS)


def test_the_pixel_limit_counts_the_padded_square():
    """100×3,000 is 300,000 pixels, but it is padded to 3,000×3,000 before resizing."""
    tall = encoded(Image.new("L", (100, 3000)), "PNG")
    with pytest.raises(ImageTooLargeError, match=r"3000×3000 square .* 9,000,000 pixels"):
        decode_image(tall, max_pixels=4_000_000)
    assert decode_image(tall, max_pixels=9_000_000).shape == (28, 28)


@pytest.mark.parametrize(
    "data",
    [
        b"definitely not an image",
        dds_with_unknown_pixel_format(),
        tiff_with_rational_strip_offsets(),
        encoded(garment(), "PNG")[:-40],
    ],
    ids=["text", "DDS NotImplementedError", "TIFF TypeError", "truncated"],
)
def test_whatever_pillow_raises_is_an_invalid_image_in_our_words(data):
    with pytest.raises(InvalidImageError, match="cannot decode the upload as an image") as error:
        decode_image(data, **LIMITS)
    assert "BytesIO" not in str(error.value) and " at 0x" not in str(error.value)


def gradient(low: float, high: float, dtype: str) -> Image.Image:
    """784 values from `low` to `high`, one per pixel of a 28×28 picture."""
    return Image.fromarray(np.linspace(low, high, 784).reshape(28, 28).astype(dtype))


@pytest.mark.parametrize(
    "image",
    [
        gradient(0, 65535, "<u2"),  # Mode I;16.
        gradient(0, 65535, ">u2"),  # Mode I;16B.
        gradient(0, 65535, "<i4"),  # Mode I holding 16-bit samples, as PNG and PPM give it.
        gradient(-(10**6), 10**7, "<i4"),
        gradient(0, 1, "<f4"),  # Mode F.
        gradient(-50, 800, "<f4"),
    ],
    ids=["I;16", "I;16B", "I in 0..65535", "I beyond", "F in 0..1", "F beyond"],
)
def test_deep_gradients_keep_their_grey_levels(image):
    """Clipped to 0–255, a 16-bit gradient kept 3 of them; scaled, nearly all 256."""
    for image_format in ("TIFF", "PNG"):
        try:
            data = encoded(image, image_format)
        except OSError:
            continue  # PNG holds 16-bit unsigned pixels only.
        levels = decode_image(data, **LIMITS, invert=False)
        assert len(np.unique(levels)) >= 250, image_format
        assert levels.min() == 0 and levels.max() == 1


def test_deep_pixels_are_scaled_by_their_type_not_stretched():
    """Mid-grey in 16 bits stays mid-grey; a dark 0–1 float picture stays dark."""
    grey = encoded(Image.fromarray(np.full((28, 28), 32768, np.uint16)), "PNG")
    assert decode_image(grey, **LIMITS, invert=False) == pytest.approx(128 / 255)
    dark = encoded(Image.new("F", (28, 28), 0.25), "TIFF")
    assert decode_image(dark, **LIMITS, invert=False) == pytest.approx(64 / 255)


def test_lab_pictures_are_read_by_their_lightness():
    ramp = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16).repeat(2, 0)[:28, :28])
    as_gray = decode_image(encoded(ramp, "PNG"), **LIMITS, invert=False)
    as_lab = decode_image(
        encoded(ramp.convert("RGB").convert("LAB"), "TIFF"), **LIMITS, invert=False
    )
    assert np.abs(as_lab - as_gray).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("mode", ["HSV", "CMYK", "YCbCr", "RGBX"])
def test_colour_modes_give_the_gray_of_their_rgb(mode):
    colours = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28, 3), np.uint8))
    expected = to_model_input(colours, invert=False)
    # HSV keeps hue in 8 bits, so its way back to RGB is a few levels off.
    assert np.abs(to_model_input(colours.convert(mode), invert=False) - expected).max() < 5 / 255


def test_transparent_areas_are_white_background():
    transparent = Image.new("RGBA", (28, 28), (0, 0, 0, 0))
    transparent.paste(garment("RGBA").crop((5, 5, 20, 20)), (5, 5))
    levels = decode_image(encoded(transparent, "PNG"), **LIMITS)
    assert levels[0, 0] == 0  # White background, inverted like a dark-on-light picture.


def test_exif_orientation_turns_the_picture():
    rotated = decode_image(exif_rotated_jpeg(6), **LIMITS)
    upright = decode_image(exif_rotated_jpeg(1), **LIMITS)
    turned_by_hand = decode_image(
        encoded(ImageOps.exif_transpose(Image.open(io.BytesIO(exif_rotated_jpeg(6)))), "PNG"),
        **LIMITS,
    )
    assert np.abs(rotated - upright).max() > 0.5
    assert np.abs(rotated - turned_by_hand).max() < 0.05


def test_only_the_first_frame_of_an_animation_is_read():
    first = decode_image(encoded(garment(), "PNG"), **LIMITS)
    for image_format in ("GIF", "PNG", "TIFF"):
        assert np.abs(decode_image(frames(image_format), **LIMITS) - first).max() < 0.05


# A real API process.


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


class PeakResidentMemory:
    """How far a process's resident memory rose above its level at the start, sampled."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = self.peak = resident_bytes(pid)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, resident_bytes(self.pid))

    def __enter__(self) -> "PeakResidentMemory":
        self._sampler.start()
        return self

    def __exit__(self, *_exception) -> None:
        self._stop.set()
        self._sampler.join()
        self.peak = max(self.peak, resident_bytes(self.pid))

    @property
    def grown(self) -> int:
        return self.peak - self.start


@pytest.mark.serial
def test_a_real_api_process_survives_the_corpus_in_bounded_memory(served_database, tmp_path):
    """Over HTTP: the corpus never raises the process's memory by 100 MB, even for a moment,
    and /health answers at once while the bombs are refused."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "api.log", "w+")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "api"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": served_database, "PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_api(base, process)
        send_all(base, [CASES["mode L PNG"]])  # The model is loaded.
        with PeakResidentMemory(process.pid) as memory:
            health_seconds = health_while(lambda: send_all(base, BOMBS * 3), base)
            send_all(base, CORPUS)
    finally:
        process.terminate()
        process.wait(30)
        log.close()
    assert max(health_seconds) < 1, health_seconds
    assert memory.grown < 100 * MEBIBYTE, f"{memory.grown / MEBIBYTE:.0f} MB"


def send_all(base: str, cases: list[Case]) -> None:
    with httpx.Client(base_url=base, timeout=60) as http:
        for case in cases:
            assert post(http, case).status_code == case.status, case.name


def health_while(work, base: str) -> list[float]:
    """How long each /health took while `work` ran in another thread, and once after."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # Reported below, in the test's own thread.
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    timings = []
    with httpx.Client(base_url=base, timeout=60) as http:
        while True:
            done = not thread.is_alive()
            started = time.monotonic()
            assert http.get("/health").status_code == 200
            timings.append(time.monotonic() - started)
            if done:
                break
            time.sleep(0.02)
    thread.join()
    if errors:
        raise errors[0]
    return timings

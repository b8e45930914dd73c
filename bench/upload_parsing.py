"""What reading one upload costs the event loop, against the usual way, in one run.

Multipart: Starlette's `request.form()` (what FastAPI's `UploadFile` uses) against the service's
`multipart_field`. Decoding: the service's `decode_image` (size checks, bomb guard, background
detection, scaling) against the floor, Pillow opening and loading the PNG into an array.
Real Fashion-MNIST test images, 28×28 PNG.

    .venv/bin/python bench/upload_parsing.py [--repeats 5000]
"""

import argparse
import asyncio
import io
import os
import platform
import time

import numpy as np
from common import ROOT  # noqa: F401  (puts the checkout on sys.path)
from PIL import Image
from predict_load import BOUNDARY, multipart, png
from starlette.requests import Request

from service.api.uploads import multipart_field
from service.datasets import load_fashion_mnist
from service.serving.images import decode_image

CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def per_call_us(function, items: list, repeats: int) -> float:
    started = time.perf_counter()
    for index in range(repeats):
        function(items[index % len(items)])
    return (time.perf_counter() - started) / repeats * 1e6


def starlette_form(body: bytes) -> bytes:
    async def read() -> bytes:
        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {
            "type": "http",
            "method": "POST",
            "headers": [(b"content-type", CONTENT_TYPE.encode())],
        }
        async with Request(scope, receive).form() as form:
            return await form["image"].read()

    return asyncio.run(read())


def pillow_floor(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5000)
    args = parser.parse_args()
    pngs = [png(image) for image in load_fashion_mnist().test_images[:64]]
    bodies = [multipart(data) for data in pngs]
    assert starlette_form(bodies[0]) == multipart_field(bodies[0], CONTENT_TYPE, "image")

    # asyncio.run's own cost is measured alone and taken off Starlette's figure.
    loop_us = per_call_us(lambda _: asyncio.run(asyncio.sleep(0)), [None], args.repeats)
    rows = [
        (
            "multipart: Starlette request.form()",
            per_call_us(starlette_form, bodies, args.repeats) - loop_us,
            "multipart: service multipart_field",
            per_call_us(lambda b: multipart_field(b, CONTENT_TYPE, "image"), bodies, args.repeats),
        ),
        (
            "decode: Pillow open + load (floor)",
            per_call_us(pillow_floor, pngs, args.repeats),
            "decode: service decode_image",
            per_call_us(lambda d: decode_image(d, max_pixels=25_000_000), pngs, args.repeats),
        ),
    ]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.repeats} calls each")
    print("| baseline | µs | service | µs | service / baseline |")
    print("|---|---|---|---|---|")
    for base_name, base_us, name, us in rows:
        print(f"| {base_name} | {base_us:.1f} | {name} | {us:.1f} | {us / base_us:.2f} |")


if __name__ == "__main__":
    main()

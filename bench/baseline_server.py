"""The usual way to serve a Keras model behind FastAPI, for comparison: `model.predict` per
request. Same model file, same inputs (multipart PNG in field `image`, or JSON instances).

    python bench/baseline_server.py --model model.keras --port 8001
"""

import argparse
import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from PIL import Image

from service.datasets import CLASS_NAMES


def create_app(model_path: str) -> FastAPI:
    app = FastAPI()
    model = keras.saving.load_model(model_path)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with request.form() as form:
                data = await form["image"].read()
            image = Image.open(io.BytesIO(data)).convert("L").resize((28, 28))
            pixels = np.asarray(image, dtype=np.float32)[np.newaxis] / 255.0
        else:
            pixels = np.asarray((await request.json())["instances"], dtype=np.float32) / 255.0
        probabilities = model.predict(pixels[..., np.newaxis], verbose=0)
        return {
            "predictions": [
                {
                    "label": int(np.argmax(row)),
                    "class_name": CLASS_NAMES[int(np.argmax(row))],
                    "confidence": float(np.max(row)),
                    "probabilities": row.tolist(),
                }
                for row in probabilities
            ]
        }

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(create_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")

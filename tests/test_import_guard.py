"""The processes that load Keras leave out the libraries it imports for unused features:
the training child and an API process that serves a model, where pandas, matplotlib and JAX
are installed (they are in the test set-up)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.import_guard import keras_backend
from service.ml.model import build_model, save_model_bytes
from service.spec import ExperimentCreate
from tests.conftest import ROOT, SQLITE_ONLY

UNUSED = ("pandas", "matplotlib.pyplot", "jax")


def imported(code: str, **environment: str) -> set[str]:
    """Which of UNUSED a fresh interpreter has imported after running `code`."""
    check = f"print(json.dumps([n for n in {UNUSED!r} if sys.modules.get(n) is not None]))"
    result = subprocess.run(
        [sys.executable, "-c", f"import json, sys\n{code}\n{check}"],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **environment},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


@pytest.fixture(scope="module", autouse=True)
def all_installed() -> None:
    # Without them the tests below would pass whatever the guard did.
    assert all(importlib.util.find_spec(name) for name in UNUSED)


def test_keras_alone_imports_all_three_here():
    assert imported("import keras") == set(UNUSED)


def test_the_guard_lets_jax_in_where_it_is_the_backend():
    code = "from service.import_guard import keep_unused_libraries_out as k; k(); import jax"
    assert imported(code, KERAS_BACKEND="jax") == {"jax"}


def test_an_api_process_loading_a_model_keeps_all_three_out(tmp_path: Path):
    path = tmp_path / "model.keras"
    path.write_bytes(save_model_bytes(build_model(ExperimentCreate(filters=4).to_spec())))
    code = (
        "from pathlib import Path\n"
        "from service.serving.model_cache import ModelCache\n"
        f"ModelCache(1, 10**9).get(1, 'a', Path({str(path)!r}).read_bytes)"
    )
    assert imported(code) == set()


@SQLITE_ONLY
def test_the_training_child_maps_neither_library(settings, kept_trainers):
    trainer = kept_trainers(settings)
    # A ready child has imported the backend; the libraries' compiled parts would be mapped.
    maps = Path(f"/proc/{trainer.pid}/maps").read_text()
    assert "/pandas/" not in maps
    assert "/jaxlib/" not in maps
    assert "/tensorflow/" in maps


def test_the_backend_is_found_as_keras_finds_it(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert keras_backend() == "tensorflow"
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    assert keras_backend() == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert keras_backend() == "torch"

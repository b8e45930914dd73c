"""Libraries that Keras and TensorFlow import whenever they are installed, for features the
service never uses, kept out of its processes before the backend loads.

Keras's array slicing imports pandas to accept DataFrames, its image galleries import
matplotlib's pyplot, and TensorFlow's `tf.lite` imports JAX to convert JAX functions. The
service feeds arrays, draws on pyplot-free Figures (service/plots.py) and converts nothing.
Where the three are installed (an ML workstation's environment, or this project's test
set-up), they took a quarter of the CPU of `import keras` (bench/trainer_child.py). A name set
to None in `sys.modules` makes its import raise ImportError, which these libraries catch.
"""

import json
import os
import sys
from pathlib import Path


def keep_unused_libraries_out() -> None:
    """Make pandas, pyplot, and JAX unless it is the backend, unimportable in this process
    (where they are not imported already)."""
    names = ["pandas", "matplotlib.pyplot"]
    if keras_backend() != "jax":
        names.append("jax")
    for name in names:
        sys.modules.setdefault(name, None)


def keras_backend() -> str:
    """The backend Keras will load, found as Keras finds it: `KERAS_BACKEND`, else the
    `keras.json` in `KERAS_HOME` (`~/.keras`), else TensorFlow."""
    if backend := os.environ.get("KERAS_BACKEND"):
        return backend
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()
    try:
        return str(json.loads((home / "keras.json").read_text()).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"

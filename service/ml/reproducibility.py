"""The seed a run trains with and the record that lets it be trained again the same way."""

import platform
import secrets

import keras
import numpy as np

from service.datasets import FashionMNIST, data_digests
from service.ml.backend import backend_name, backend_version, device_name, set_determinism
from service.results import Reproducibility
from service.spec import ExperimentSpec

# The largest seed a spec takes: a drawn seed must be one a user can send back to repeat the run.
MAX_SEED = 2**31 - 1


def prepare_run(spec: ExperimentSpec, dataset: FashionMNIST, device: str) -> Reproducibility:
    """Choose the run's seed, set the backend's determinism switch, and describe the run."""
    # Drawn from the operating system: a seeded run before this one in the same process left
    # Python's and NumPy's generators where that seed put them.
    seed = spec.seed if spec.seed is not None else secrets.randbelow(MAX_SEED + 1)
    # Only a seed the user chose asks for repeatable results; GPU kernels are not promised.
    deterministic = spec.seed is not None and device == "cpu"
    set_determinism(deterministic)
    return Reproducibility(
        seed=seed,
        keras_version=keras.__version__,
        backend=backend_name(),
        backend_version=backend_version(),
        numpy_version=np.__version__,
        python_version=platform.python_version(),
        device_name=device_name(device),
        data_sha256=data_digests(dataset),
        deterministic=deterministic,
    )
